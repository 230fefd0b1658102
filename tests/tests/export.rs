//! `clo export`: the merged model directory loads back with the same logits as the trained run,
//! the PEFT adapter holds `B @ A` in PEFT's layout, and (with CLO_PYTHON set) transformers and
//! peft reproduce clo's logits (tests/fixtures/check_export.py).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use clo_core::Pretrained;
use clo_core::export::{export_merged, export_peft};
use clo_core::models::CausalLm;
use clo_core::train::checkpoint::{RunDir, load_trained};
use clo_core::train::{Method, Outcome, RunConfig, TrainOptions, TrainableKind, train};
use clo_tests::{fixture_dir, max_abs_diff};

fn trained_run(trainable: TrainableKind, dir: &Path) -> (RunConfig, PathBuf) {
    trained_run_of(fixture_dir("qwen2"), trainable, dir)
}

fn trained_run_of(model: PathBuf, trainable: TrainableKind, dir: &Path) -> (RunConfig, PathBuf) {
    let config = RunConfig {
        model,
        data: Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data/quads.jsonl"),
        method: Method::Clo,
        trainable,
        steps: Some(8),
        batch_size: 4,
        lr: 1e-2,
        lora_rank: 4,
        lora_alpha: 8.0,
        val_fraction: 0.0,
        ..RunConfig::default()
    };
    let out = dir.join("run");
    let opts = TrainOptions::new(&out, dir.join("cache"));
    let outcome = train(&config, &opts, &Device::flex(), &mut |_| {}).unwrap();
    assert!(matches!(outcome, Outcome::Finished(_)));
    (config, out)
}

const IDS: [[i64; 6]; 2] = [[5, 17, 42, 7, 99, 3], [250, 1, 64, 64, 12, 300]];

fn logits(model: &CausalLm) -> Vec<f32> {
    let ids = Tensor::<2, Int>::from_data(TensorData::new(IDS.concat(), [2, 6]), &Device::flex());
    model
        .forward(ids, None)
        .into_data()
        .try_into_vec_as()
        .unwrap()
}

/// clo's logits of the trained run, straight from its checkpoint (base + trained tensors).
fn run_logits(config: &RunConfig, run: &Path) -> Vec<f32> {
    let last = RunDir::new(run).latest_checkpoint().unwrap();
    let lm = load_trained(config, &last, &Device::flex()).unwrap();
    logits(&lm.model.valid())
}

#[test]
fn merged_export_loads_back_with_the_trained_logits() {
    for trainable in [TrainableKind::Attention, TrainableKind::Lora] {
        let dir = tempfile::tempdir().unwrap();
        let (config, run) = trained_run(trainable, dir.path());
        let out = dir.path().join("merged");
        export_merged(&run, "best", &out, &Device::flex(), false).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(out.join(f).exists(), "{f}");
        }
        let exported = Pretrained::load(&out, &Device::flex()).unwrap();
        let want = run_logits(&config, &run);
        let got = logits(&exported.model);
        assert!(
            max_abs_diff(&got, &want) < 1e-5,
            "{trainable:?}: {}",
            max_abs_diff(&got, &want)
        );
        let base = Pretrained::load(&config.model, &Device::flex()).unwrap();
        assert!(
            max_abs_diff(&logits(&base.model), &want) > 1e-3,
            "training changed the model"
        );
    }
}

/// A base whose config.json says `dtype` (transformers 5) exports a config.json with `dtype`
/// alone (f32), which loads again; a config holding both keys (what exports wrote before) loads
/// too, `dtype` winning; the weights file is readable by others like the files beside it.
#[test]
fn a_transformers_5_config_exports_a_model_that_loads_again() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    for e in std::fs::read_dir(fixture_dir("qwen2")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), base.join(e.file_name())).unwrap();
    }
    let config_path = base.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let map = config.as_object_mut().unwrap();
    map.remove("torch_dtype");
    map.insert("dtype".into(), "bfloat16".into());
    std::fs::write(&config_path, serde_json::to_string(&config).unwrap()).unwrap();

    let (_, run) = trained_run_of(base, TrainableKind::Attention, dir.path());
    let out = dir.path().join("merged");
    export_merged(&run, "best", &out, &Device::flex(), false).unwrap();
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(written["dtype"], "float32");
    assert!(written.get("torch_dtype").is_none(), "{written}");
    let exported = Pretrained::load(&out, &Device::flex()).unwrap();
    assert_eq!(exported.config.torch_dtype.as_deref(), Some("float32"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("model.safetensors"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "model.safetensors mode {mode:o}");
    }

    let mut both = written.clone();
    both["torch_dtype"] = "bfloat16".into();
    std::fs::write(out.join("config.json"), both.to_string()).unwrap();
    let reloaded = Pretrained::load(&out, &Device::flex()).unwrap();
    assert_eq!(reloaded.config.torch_dtype.as_deref(), Some("float32"));
}

/// The merged weight of every adapted module minus the base weight equals
/// `(alpha / r) * lora_B.weight @ lora_A.weight` read from the PEFT files (PyTorch layout).
#[test]
fn peft_adapter_holds_the_lora_delta_in_pefts_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (config, run) = trained_run(TrainableKind::Lora, dir.path());
    let (merged, peft) = (dir.path().join("merged"), dir.path().join("peft"));
    export_merged(&run, "best", &merged, &Device::flex(), false).unwrap();
    export_peft(&run, "best", &peft, &Device::flex(), false).unwrap();

    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "k_proj", "v_proj", "o_proj"])
    );

    let read = |p: PathBuf| std::fs::read(p).unwrap();
    let (ab, mb, bb) = (
        read(peft.join("adapter_model.safetensors")),
        read(merged.join("model.safetensors")),
        read(fixture_dir("qwen2").join("model.safetensors")),
    );
    let (adapter, merged, base) = (
        safetensors::SafeTensors::deserialize(&ab).unwrap(),
        safetensors::SafeTensors::deserialize(&mb).unwrap(),
        safetensors::SafeTensors::deserialize(&bb).unwrap(),
    );
    let floats = |t: safetensors::tensor::TensorView| -> (Vec<usize>, Vec<f32>) {
        let v = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (t.shape().to_vec(), v)
    };
    assert_eq!(
        adapter.len(),
        2 * 4 * 2,
        "A and B for q, k, v, o of 2 layers"
    );
    let scale = 8.0 / 4.0;
    let mut largest = 0f32;
    for layer in 0..2 {
        for m in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            let key = |s: &str| format!("base_model.model.model.layers.{layer}.self_attn.{m}.{s}");
            let (sa, a) = floats(adapter.tensor(&key("lora_A.weight")).unwrap());
            let (sb, b) = floats(adapter.tensor(&key("lora_B.weight")).unwrap());
            let name = format!("model.layers.{layer}.self_attn.{m}.weight");
            let (sw, w) = floats(merged.tensor(&name).unwrap());
            let (_, w0) = floats(base.tensor(&name).unwrap());
            let (out, inp, r) = (sw[0], sw[1], sa[0]);
            assert_eq!((sa[1], sb[0], sb[1]), (inp, out, r), "{name}");
            for o in 0..out {
                for i in 0..inp {
                    let delta: f32 =
                        (0..r).map(|k| b[o * r + k] * a[k * inp + i]).sum::<f32>() * scale;
                    let got = w[o * inp + i] - w0[o * inp + i];
                    assert!(
                        (got - delta).abs() < 1e-5,
                        "{name}[{o},{i}]: {got} vs {delta}"
                    );
                    largest = largest.max(delta.abs());
                }
            }
        }
    }
    assert!(largest > 1e-4, "the adapters trained");
    assert!(config.trainable == TrainableKind::Lora);
}

/// A PEFT adapter clo wrote loads back onto its base (`--adapter`, or the adapter directory as
/// the model) with the trained run's logits; bad adapters are refused by name.
#[test]
fn peft_adapter_loads_back_onto_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let (config, run) = trained_run(TrainableKind::Lora, dir.path());
    let peft = dir.path().join("peft");
    export_peft(&run, "best", &peft, &Device::flex(), false).unwrap();
    let want = run_logits(&config, &run);
    let on_base = Pretrained::load(&config.model, &Device::flex())
        .unwrap()
        .with_adapter(&peft)
        .unwrap();
    let d = max_abs_diff(&logits(&on_base.model.valid()), &want);
    assert!(d < 1e-5, "base + adapter: {d}");
    let itself = Pretrained::load(&peft, &Device::flex()).unwrap();
    let d = max_abs_diff(&logits(&itself.model.valid()), &want);
    assert!(d < 1e-5, "the adapter directory as the model: {d}");

    // A factor of another name, a regex target list and a lost base are refused by name.
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let config_text = std::fs::read_to_string(peft.join("adapter_config.json")).unwrap();
    std::fs::write(bad.join("adapter_config.json"), &config_text).unwrap();
    let bytes = std::fs::read(peft.join("adapter_model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let renamed: Vec<(String, safetensors::tensor::TensorView)> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n.replace("layers.1.self_attn.q_proj", "layers.7.self_attn.q_proj"),
                v,
            )
        })
        .collect();
    std::fs::write(
        bad.join("adapter_model.safetensors"),
        safetensors::serialize(renamed, None).unwrap(),
    )
    .unwrap();
    let base = || Pretrained::load(&config.model, &Device::flex()).unwrap();
    let err = base().with_adapter(&bad).unwrap_err().to_string();
    assert!(
        err.contains("layers.7.self_attn.q_proj") && err.contains("adapts no module"),
        "{err}"
    );
    let mut regex: serde_json::Value = serde_json::from_str(&config_text).unwrap();
    regex["target_modules"] = "(q|v)_proj".into();
    std::fs::write(bad.join("adapter_config.json"), regex.to_string()).unwrap();
    let err = base().with_adapter(&bad).unwrap_err().to_string();
    assert!(
        err.contains("target_modules") && err.contains("adapter_config.json"),
        "{err}"
    );
    let lost = config_text.replace(&config.model.display().to_string(), "/nowhere/base");
    std::fs::write(bad.join("adapter_config.json"), lost).unwrap();
    std::fs::write(bad.join("adapter_model.safetensors"), &bytes).unwrap();
    let err = Pretrained::load(&bad, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nowhere/base") && err.contains("--adapter"),
        "{err}"
    );
}

/// Adapters written by peft itself (tests/fixtures/make_peft_fixture.py: bf16 factors, rsLoRA,
/// MLP targets) give peft's logits, on `--adapter` and as the model directory.
#[test]
fn peft_written_adapters_give_pefts_logits() {
    for name in ["qv-bf16", "rslora-mlp"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/peft")
            .join(name);
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let want: Vec<f32> = expected["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter())
            .flat_map(|pos| pos.as_array().unwrap().iter())
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let lm = Pretrained::load(&dir, &Device::flex()).unwrap();
        let d = max_abs_diff(&logits(&lm.model.valid()), &want);
        assert!(d < 1e-4, "{name}: {d}");
        let base = Pretrained::load(&fixture_dir("qwen2"), &Device::flex()).unwrap();
        assert!(
            max_abs_diff(&logits(&base.model), &want) > 1e-2,
            "{name} changes the logits"
        );
        let on = base.with_adapter(&dir).unwrap();
        assert!(
            max_abs_diff(&logits(&on.model.valid()), &want) < 1e-4,
            "{name}"
        );
    }
}

/// Polls a future that never waits (reads on the CPU backend resolve at once).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// `copy_to_device` (what the browser does before writing files) keeps every weight: the copy
/// computes the same logits and holds the same LoRA factors.
#[test]
fn an_awaited_copy_keeps_every_weight() {
    let dir = tempfile::tempdir().unwrap();
    let (config, run) = trained_run(TrainableKind::Lora, dir.path());
    let last = RunDir::new(&run).latest_checkpoint().unwrap();
    let lm = load_trained(&config, &last, &Device::flex()).unwrap();
    let copy = ready(clo_core::export::copy_to_device(
        &lm.model.valid(),
        &Device::flex(),
    ))
    .unwrap();
    let d = max_abs_diff(&logits(&copy), &logits(&lm.model.valid()));
    assert_eq!(d, 0.0);
    let (a, b) = (
        clo_core::export::lora_tensors(&copy, &last).unwrap(),
        clo_core::export::lora_tensors(&lm.model, &last).unwrap(),
    );
    assert_eq!(a.len(), 16);
    assert_eq!(a, b);
}

/// transformers (merged) and peft (base + adapter) give clo's logits. Needs a Python with torch,
/// transformers and peft in CLO_PYTHON; without it the test is ignored (see README, "Tests").
#[test]
#[ignore = "needs CLO_PYTHON with torch, transformers and peft"]
fn export_matches_transformers() {
    let python = std::env::var("CLO_PYTHON")
        .expect("set CLO_PYTHON to a Python with torch, transformers and peft");
    let dir = tempfile::tempdir().unwrap();
    let (config, run) = trained_run(TrainableKind::Lora, dir.path());
    let (merged, peft) = (dir.path().join("merged"), dir.path().join("peft"));
    export_merged(&run, "best", &merged, &Device::flex(), false).unwrap();
    export_peft(&run, "best", &peft, &Device::flex(), false).unwrap();
    let want = run_logits(&config, &run);
    let vocab = want.len() / 12;
    let logits: Vec<Vec<Vec<f32>>> = want
        .chunks(6 * vocab)
        .map(|row| row.chunks(vocab).map(|p| p.to_vec()).collect())
        .collect();
    let spec = serde_json::json!({
        "base": config.model, "merged": merged, "peft": peft, "ids": IDS, "logits": logits,
    });
    let report = clo_tests::run_python_check(&python, "check_export.py", &spec, dir.path());
    eprintln!("{report}");
}
