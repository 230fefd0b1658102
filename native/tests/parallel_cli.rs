//! Data parallelism as a user runs it: `clo train --devices` on two devices of this machine (the
//! CPU and lavapipe's software Vulkan) gives the run of one device with the same batch: every
//! step's loss within 1e-5 relative and the final weights within 1e-5. With the `mpi` feature,
//! `mpirun -np 2 clo train --distributed mpi` gives the single process's run, and a killed rank
//! stops the job with an error, after which `--resume` finishes with the uninterrupted result.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "clo failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn clo() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clo"))
}

/// `clo train` on the qwen2 fixture: steps of 3 examples (uneven shards on two devices).
fn train_args(out: &Path, cache: &Path, method: &str, trainable: &str, steps: &str) -> Vec<String> {
    let model = root().join("models/qwen2");
    let data = root().join("data/quads.jsonl");
    [
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--method",
        method,
        "--trainable",
        trainable,
        "--out",
        out.to_str().unwrap(),
        "--steps",
        steps,
        "--batch-size",
        "3",
        "--lr",
        "1e-3",
        "--save-every",
        "1",
        "--val-fraction",
        "0",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec()
}

fn metric(run: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()[key]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// The merged weights of a run's last checkpoint, as f32 per tensor name.
fn weights(run: &Path) -> Vec<(String, Vec<f32>)> {
    let out = run.with_extension("export");
    ok(clo()
        .args([
            "export",
            "--run",
            run.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--merged",
            "--from",
            "last",
        ])
        .output()
        .unwrap());
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, values)
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

/// Same losses (1e-5 relative) at every step and the same final weights (1e-5).
///
/// Except the key projections' biases: their true gradient is zero (adding a constant to every
/// key of a query adds one constant to its scores, which softmax ignores), so what they get is
/// float noise, and AdamW scales noise up to steps of the learning rate's size. One device moves
/// them by its noise, several devices by theirs; they are not a measure of equality.
fn assert_same_run(one: &Path, many: &Path, what: &str) {
    let (a, b) = (metric(one, "loss"), metric(many, "loss"));
    assert_eq!(a.len(), b.len(), "{what}: steps");
    for (step, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1e-3),
            "{what}: step {step} loss {x} vs {y}"
        );
    }
    let (wa, wb) = (weights(one), weights(many));
    assert_eq!(wa.len(), wb.len());
    let mut worst = 0f32;
    for ((na, va), (nb, vb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        if na.ends_with("k_proj.bias") {
            continue;
        }
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst <= 1e-5, "{what}: final weights differ by {worst}");
}

/// Whether lavapipe (or any software Vulkan adapter) is here for `wgpu:cpu`.
fn has_software_vulkan() -> bool {
    std::fs::read_dir("/usr/share/vulkan/icd.d")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("lvp"))
        })
        .unwrap_or(false)
}

#[test]
fn two_devices_train_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // Two devices of different kinds where lavapipe is installed (CI), else two replicas on
    // the CPU.
    let devices = if has_software_vulkan() {
        "cpu,wgpu:cpu"
    } else {
        "cpu,cpu"
    };
    for (method, trainable) in [("clo", "attention"), ("dpo", "lora"), ("sft", "lora")] {
        let one = dir.path().join(format!("{method}-{trainable}-one"));
        let many = dir.path().join(format!("{method}-{trainable}-many"));
        ok(clo()
            .args(train_args(&one, &cache, method, trainable, "3"))
            .output()
            .unwrap());
        let mut args = train_args(&many, &cache, method, trainable, "3");
        args.extend(["--devices".into(), devices.into()]);
        ok(clo().args(&args).output().unwrap());
        assert_same_run(&one, &many, &format!("{method}/{trainable} on {devices}"));
    }
}

#[test]
fn bad_device_lists_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = train_args(
        &dir.path().join("r"),
        &dir.path().join("c"),
        "clo",
        "attention",
        "1",
    );
    args.extend(["--devices".into(), "cpu,gpu9".into()]);
    let out = clo().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--device gpu9: unknown device"), "{err}");
    assert!(!dir.path().join("r/metrics.jsonl").exists());

    let mut args = train_args(
        &dir.path().join("r"),
        &dir.path().join("c"),
        "clo",
        "attention",
        "1",
    );
    args.extend(["--distributed".into(), "carrier-pigeon".into()]);
    let out = clo().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--distributed carrier-pigeon: unknown"),
        "{err}"
    );
}

#[cfg(feature = "mpi")]
mod mpi {
    use super::*;
    use std::time::{Duration, Instant};

    /// `mpirun -np 2` on this machine (as root too, oversubscribing the two cores).
    fn mpirun(args: &[String]) -> Command {
        let mut cmd = Command::new("mpirun");
        cmd.args(["-np", "2", "--oversubscribe", "--bind-to", "none"])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
            .arg(env!("CARGO_BIN_EXE_clo"))
            .args(args);
        cmd
    }

    fn distributed(
        out: &Path,
        cache: &Path,
        method: &str,
        trainable: &str,
        steps: &str,
    ) -> Vec<String> {
        let mut args = train_args(out, cache, method, trainable, steps);
        args.extend(["--distributed".into(), "mpi".into()]);
        args
    }

    #[test]
    fn two_ranks_train_as_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        for (method, trainable) in [("clo", "attention"), ("dpo", "lora")] {
            let one = dir.path().join(format!("{method}-one"));
            let two = dir.path().join(format!("{method}-mpi"));
            ok(clo()
                .args(train_args(&one, &cache, method, trainable, "3"))
                .output()
                .unwrap());
            let out = mpirun(&distributed(&two, &cache, method, trainable, "3"))
                .output()
                .unwrap();
            let stdout = ok(out);
            // Rank 0 alone reports.
            assert_eq!(stdout.matches("finished").count(), 1, "{stdout}");
            assert_same_run(
                &one,
                &two,
                &format!("{method}/{trainable} over 2 MPI ranks"),
            );
        }
    }

    /// The environment of a running process, as `KEY=VALUE` strings.
    fn environ(pid: u32) -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|b| {
                b.split(|&c| c == 0)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pid of the clo process of MPI rank `rank` that trains into `out` (other tests run
    /// ranks of their own at the same time).
    fn rank_pid(rank: usize, out: &Path) -> Option<u32> {
        let want = format!("OMPI_COMM_WORLD_RANK={rank}");
        let out = out.to_str()?;
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let ours = exe.file_name()? == "clo"
                && cmdline.split(|&c| c == 0).any(|arg| arg == out.as_bytes());
            (ours && environ(pid).contains(&want)).then_some(pid)
        })
    }

    #[test]
    fn a_killed_rank_stops_the_job_and_resume_finishes_it() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let (whole, cut) = (dir.path().join("whole"), dir.path().join("cut"));
        // Long enough that the job is still running when its rank is killed.
        ok(
            mpirun(&distributed(&whole, &cache, "clo", "attention", "60"))
                .output()
                .unwrap(),
        );

        let child = mpirun(&distributed(&cut, &cache, "clo", "attention", "60"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !cut.join("checkpoints/step-00000002").exists() {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "no checkpoint appeared"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = rank_pid(1, &cut).expect("rank 1 runs");
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "the job must fail when a rank dies");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("rank 1") || text.contains("exited on signal 9"),
            "no clear error:\n{text}"
        );
        assert!(!cut.join("summary.json").exists());
        let steps = std::fs::read_to_string(cut.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count();
        assert!(steps < 60, "killed after {steps} steps");

        let mut resume = distributed(&cut, &cache, "clo", "attention", "60");
        resume.push("--resume".into());
        ok(mpirun(&resume).output().unwrap());
        assert_same_run(&whole, &cut, "resumed over 2 MPI ranks");
    }
}
