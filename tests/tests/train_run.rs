//! Whole training runs on the fixture model: every method trains 50 steps (20 on wgpu) with its loss falling
//! and exactly its trainable set changing; step 0 is the untouched model; accumulation, the
//! reference cache, LoRA adapters-off, NaN handling and dropped prompts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::store::ModuleSnapshot;
use clo_core::CoreError;
use clo_core::Pretrained;
use clo_core::models::CausalLm;
use clo_core::score::{batch_logps, collate};
use clo_core::train::Batcher;
use clo_core::train::batch::{TokenizedQuad, clo_rows, tokenize_quads};
use clo_core::train::checkpoint::{RunDir, load_trained};
use clo_core::train::data::read_quadruples;
use clo_core::train::loss::{NllReduction, clo_loss};
use clo_core::train::reference::{adapters_off, read_run_reference, reference_logps};
use clo_core::train::{
    Method, Outcome, RunConfig, RunSummary, StepMetrics, TrainOptions, TrainableKind, train,
};
use clo_tests::{fixture_dir, wgpu_device};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data/quads.jsonl")
}

fn config(method: Method, trainable: TrainableKind) -> RunConfig {
    RunConfig {
        model: fixture_dir("qwen2"),
        data: data(),
        method,
        trainable,
        steps: Some(50),
        batch_size: 4,
        lr: 1e-3,
        min_lr: 1e-4,
        lora_rank: 4,
        lora_alpha: 8.0,
        val_fraction: 0.125,
        eval_every: Some(10),
        ..RunConfig::default()
    }
}

struct Run {
    _dir: tempfile::TempDir,
    out: PathBuf,
    summary: RunSummary,
}

fn run_in(config: &RunConfig, cache: &Path, device: &Device) -> Result<Run, CoreError> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let opts = TrainOptions::new(&out, cache);
    match train(config, &opts, device, &mut |_| {})? {
        Outcome::Finished(summary) => Ok(Run {
            _dir: dir,
            out,
            summary,
        }),
        other => panic!("unexpected {other:?}"),
    }
}

fn run(config: &RunConfig, device: &Device) -> Run {
    let cache = tempfile::tempdir().unwrap();
    run_in(config, cache.path(), device).unwrap()
}

fn metrics(out: &Path) -> Vec<StepMetrics> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Raw bytes of every tensor, by module path.
fn snapshot(model: &CausalLm) -> BTreeMap<String, Vec<u8>> {
    model
        .valid()
        .collect(None, None, false)
        .into_iter()
        .map(|t| (t.name.clone(), t.to_bytes().unwrap().to_vec()))
        .collect()
}

fn is_attention(name: &str) -> bool {
    ["q_proj", "k_proj", "v_proj", "o_proj"]
        .iter()
        .any(|p| name.contains(&format!("self_attn.{p}.")))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Loss falls within each stage, and exactly the trainable set moved away from the base.
fn check_run(config: &RunConfig, device: &Device) {
    let steps = config.steps.expect("a step count");
    let r = run(config, device);
    let lines = metrics(&r.out);
    let stages = config.method.stages();
    assert_eq!(
        lines.len(),
        steps * stages.len(),
        "one line per optimizer step"
    );
    assert_eq!(r.summary.steps, steps * stages.len());
    for (s, stage) in stages.iter().enumerate() {
        let part = &lines[s * steps..(s + 1) * steps];
        assert!(part.iter().all(|m| m.stage == stage.name()));
        let first: Vec<f64> = part[..5].iter().map(|m| m.loss).collect();
        let last: Vec<f64> = part[steps - 5..].iter().map(|m| m.loss).collect();
        assert!(
            mean(&last) < mean(&first) - 0.05,
            "{}: loss should fall: {first:?} -> {last:?}",
            stage.name()
        );
        assert!(
            part.iter()
                .all(|m| m.grad_norm.is_finite() && m.grad_norm > 0.0)
        );
        let prefs = stage.needs_reference();
        assert_eq!(part[0].acc_en.is_some(), prefs, "{}", stage.name());
        assert_eq!(part[0].loss_cl.is_some(), prefs, "{}", stage.name());
    }
    assert!(
        lines.iter().any(|m| m.val_loss.is_some()),
        "validation runs every 10 steps"
    );

    let flex = Device::flex();
    let base = snapshot(&Pretrained::load(&config.model, &flex).unwrap().model);
    let last = RunDir::new(&r.out).latest_checkpoint().unwrap();
    let trained = snapshot(&load_trained(config, &last, &flex).unwrap().model);
    let mut changed = 0;
    for (name, bytes) in &trained {
        let Some(before) = base.get(name) else {
            assert!(
                config.trainable == TrainableKind::Lora && name.contains(".lora."),
                "{name}"
            );
            continue;
        };
        let trains = match config.trainable {
            TrainableKind::Attention => is_attention(name),
            TrainableKind::Full => true,
            TrainableKind::Lora => false,
        };
        if trains {
            assert_ne!(bytes, before, "{name} should have trained");
            changed += 1;
        } else {
            assert_eq!(bytes, before, "{name} must stay bit-identical");
        }
    }
    match config.trainable {
        TrainableKind::Attention => assert_eq!(changed, 14),
        TrainableKind::Full => assert_eq!(changed, base.len()),
        TrainableKind::Lora => {
            // q, k, v, o of 2 layers, a and b each.
            assert_eq!(trained.len() - base.len(), 16);
        }
    }
}

#[test]
fn every_method_trains_attention_only_on_cpu() {
    for method in Method::ALL {
        check_run(&config(method, TrainableKind::Attention), &Device::flex());
    }
}

#[test]
fn lora_and_full_train_on_cpu() {
    check_run(&config(Method::Clo, TrainableKind::Lora), &Device::flex());
    check_run(&config(Method::Sft, TrainableKind::Full), &Device::flex());
}

/// 20 steps per stage on wgpu (lavapipe runs on the CPU: 50 took 150 s of CI's time).
#[test]
fn every_method_trains_on_wgpu() {
    let device = wgpu_device();
    let short = |method, trainable| RunConfig {
        steps: Some(20),
        ..config(method, trainable)
    };
    for method in Method::ALL {
        check_run(&short(method, TrainableKind::Attention), &device);
    }
    check_run(&short(Method::Clo, TrainableKind::Lora), &device);
}

/// Step 0 is the first batch under the untouched model: with no shuffling and no validation
/// split it is quadruples 0..4, whose CLO loss is computed here independently (the functions of
/// the PyTorch-checked loss parity test) and equals the logged one.
#[test]
fn step_zero_is_the_first_batch_before_any_update() {
    let mut c = config(Method::Clo, TrainableKind::Attention);
    c.shuffle = false;
    c.val_fraction = 0.0;
    c.steps = Some(3);
    let r = run(&c, &Device::flex());
    let lines = metrics(&r.out);

    let device = Device::flex();
    let lm = Pretrained::load(&c.model, &device).unwrap();
    let quads = read_quadruples(&c.data).unwrap();
    let (tok, _) = tokenize_quads(&lm.tokenizer, &quads[..4], c.max_len).unwrap();
    let refs: Vec<&TokenizedQuad> = tok.iter().collect();
    let batch = collate(&clo_rows(&refs, c.max_len), &device);
    let (logps, _) = batch_logps(&lm.model, &batch);
    let counts: Vec<f32> = batch.n_tokens[8..12].iter().map(|&t| t as f32).collect();
    let terms = clo_loss(
        logps.clone(),
        logps,
        Tensor::from_data(TensorData::new(counts, [4]), &device),
        c.beta,
        c.lambda,
        NllReduction::TokenMean,
    );
    let want = terms.loss.into_scalar::<f32>() as f64;
    assert!(
        (lines[0].loss - want).abs() < 1e-4,
        "{} vs {want}",
        lines[0].loss
    );
    // Policy = reference before the update: the preference term is exactly 2 ln 2.
    assert!((lines[0].loss_cl.unwrap() - 2.0 * 2f64.ln()).abs() < 1e-4);
    assert_eq!(
        lines[0].lr, 0.0,
        "warmup starts at 0 (3% of 3 steps = 1 step)"
    );
    assert!(lines[1].loss != lines[0].loss);
}

/// DPO's loss is a per-pair mean, so 2 micro-batches of 2 pairs accumulate to the gradient of one
/// batch of 4: same loss and grad norm at step 0.
#[test]
fn gradient_accumulation_matches_a_larger_batch() {
    let mut one = config(Method::Dpo, TrainableKind::Attention);
    one.shuffle = false;
    one.val_fraction = 0.0;
    one.steps = Some(2);
    let mut two = one.clone();
    two.batch_size = 2;
    two.grad_accum = 2;
    let (a, b) = (run(&one, &Device::flex()), run(&two, &Device::flex()));
    let (a, b) = (&metrics(&a.out)[0], &metrics(&b.out)[0]);
    assert!((a.loss - b.loss).abs() < 1e-6, "{} vs {}", a.loss, b.loss);
    assert!(
        (a.grad_norm - b.grad_norm).abs() < 1e-4 * a.grad_norm,
        "{} vs {}",
        a.grad_norm,
        b.grad_norm
    );
    assert_eq!(a.tokens, b.tokens);
}

/// The second run over the same weights, data, template and max_len reads the reference from
/// the cache (same numbers); another max_len misses it.
#[test]
fn reference_logps_are_cached_across_runs() {
    let cache = tempfile::tempdir().unwrap();
    let mut c = config(Method::Clo, TrainableKind::Attention);
    c.steps = Some(2);
    let first = run_in(&c, cache.path(), &Device::flex()).unwrap();
    assert_eq!(first.summary.reference_cached, vec![false]);
    let entries = std::fs::read_dir(cache.path().join("reference"))
        .unwrap()
        .count();
    assert_eq!(entries, 1);

    let mut other = c.clone();
    other.lr = 5e-4; // not part of the key
    let second = run_in(&other, cache.path(), &Device::flex()).unwrap();
    assert_eq!(second.summary.reference_cached, vec![true]);
    let read = |r: &Run| read_run_reference(&RunDir::new(&r.out).reference("clo")).unwrap();
    assert_eq!(read(&first), read(&second));

    let mut shorter = c.clone();
    shorter.max_len = 90;
    let third = run_in(&shorter, cache.path(), &Device::flex()).unwrap();
    assert_eq!(third.summary.reference_cached, vec![false]);
    assert_ne!(read(&first).key, read(&third).key);
}

/// After LoRA training, the model with its adapters switched off gives the reference numbers
/// the run computed from the base model before training; with adapters on it does not.
#[test]
fn lora_with_adapters_off_reproduces_the_reference() {
    let mut c = config(Method::Clo, TrainableKind::Lora);
    c.steps = Some(10);
    c.val_fraction = 0.0;
    let r = run(&c, &Device::flex());
    let cached = read_run_reference(&RunDir::new(&r.out).reference("clo")).unwrap();

    let device = Device::flex();
    let last = RunDir::new(&r.out).latest_checkpoint().unwrap();
    let lm = load_trained(&c, &last, &device).unwrap();
    let quads = read_quadruples(&c.data).unwrap();
    let (tok, _) = tokenize_quads(&lm.tokenizer, &quads, c.max_len).unwrap();
    let batcher = Batcher::new(
        Method::Clo,
        &tok,
        &RunConfig {
            batch_size: 4,
            ..c.clone()
        },
        0,
    );
    let score = |model: &CausalLm| reference_logps(model, &batcher, &mut |_, _| {});
    let max_diff = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    let on = score(&lm.model);
    let off = score(&adapters_off(lm.model));
    assert!(
        max_diff(&off, &cached.sets[0]) < 1e-4,
        "{}",
        max_diff(&off, &cached.sets[0])
    );
    assert!(
        max_diff(&on, &cached.sets[0]) > 1e-2,
        "the adapters trained"
    );
}

/// A learning rate of 1e30 blows the weights up: the run stops at the first non-finite loss,
/// names the step, and keeps a checkpoint of the last finite weights.
#[test]
fn nan_loss_stops_and_keeps_the_last_good_checkpoint() {
    let mut c = config(Method::Sft, TrainableKind::Full);
    c.lr = 1e30;
    c.warmup = 0.0;
    c.max_grad_norm = 1e30;
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions::new(dir.path().join("run"), dir.path().join("cache"));
    let err = train(&c, &opts, &Device::flex(), &mut |_| {}).expect_err("training must stop");
    let CoreError::NonFinite {
        step, checkpoint, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert!(err.to_string().contains(&format!("step {step}")), "{err}");
    assert!(*step >= 1, "step 0 runs on the base model");
    assert!(checkpoint.starts_with(dir.path().join("run/checkpoints")));
    let lines = metrics(&dir.path().join("run"));
    assert_eq!(
        lines.len(),
        *step,
        "one line per finite step, none for the bad one"
    );
    assert!(lines.iter().all(|m| m.loss.is_finite()));
    let lm = load_trained(&c, checkpoint, &Device::flex()).unwrap();
    let values: Vec<f32> = lm
        .model
        .model
        .embed_tokens
        .weight
        .val()
        .into_data()
        .try_into_vec_as()
        .unwrap();
    assert!(
        values.iter().all(|v| v.is_finite()),
        "the kept weights are finite"
    );
}

/// Quadruples whose prompt alone reaches max_len are dropped and counted in the summary.
#[test]
fn long_prompts_are_dropped_and_counted() {
    let device = Device::flex();
    let lm = Pretrained::load(&fixture_dir("qwen2"), &device).unwrap();
    let quads = read_quadruples(&data()).unwrap();
    let max_len = 66;
    let expected = quads
        .iter()
        .filter(|q| {
            let en = lm.tokenizer.prompt_ids(&q.x_en, true).unwrap().len();
            let tgt = lm.tokenizer.prompt_ids(&q.x_tgt, true).unwrap().len();
            en.max(tgt) >= max_len
        })
        .count();
    assert!(expected > 0 && expected < quads.len(), "{expected}");
    let mut c = config(Method::Clo, TrainableKind::Attention);
    c.max_len = max_len;
    c.steps = Some(1);
    c.val_fraction = 0.0;
    let r = run(&c, &device);
    assert_eq!(r.summary.dropped_long_prompts, expected);
    assert_eq!(r.summary.train_quadruples, quads.len() - expected);
    let summary: RunSummary =
        serde_json::from_str(&std::fs::read_to_string(r.out.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary.dropped_long_prompts, expected);
}

/// `sft+dpo` stopped (through `TrainOptions::cancel`) right at the end of its SFT stage resumes
/// into the DPO stage and ends with the same weights and metrics as an uninterrupted run.
#[test]
fn sft_dpo_cancelled_at_the_stage_boundary_resumes_exactly() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut c = config(Method::SftDpo, TrainableKind::Attention);
    c.steps = Some(6);
    c.save_every = Some(4);
    let whole = run(&c, &Device::flex());

    let dir = tempfile::tempdir().unwrap();
    let mut opts = TrainOptions::new(dir.path().join("run"), dir.path().join("cache"));
    let cancel = Arc::new(AtomicBool::new(false));
    opts.cancel = Some(cancel.clone());
    let outcome = train(&c, &opts, &Device::flex(), &mut |p| {
        if let clo_core::train::Progress::Step(m) = p
            && m.step == 5
        {
            cancel.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    let Outcome::Cancelled { step, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(step, 6, "stopped after the last SFT step");
    opts.cancel = None;
    opts.resume = true;
    let Outcome::Finished(summary) = train(&c, &opts, &Device::flex(), &mut |_| {}).unwrap() else {
        panic!("not finished")
    };
    assert_eq!(summary.steps, 12);
    let (a, b) = (metrics(&whole.out), metrics(&opts.out));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.step, &x.stage, x.loss), (y.step, &y.stage, y.loss));
    }
    let weights = |out: &Path| {
        let last = RunDir::new(out).latest_checkpoint().unwrap();
        snapshot(&load_trained(&c, &last, &Device::flex()).unwrap().model)
    };
    assert!(
        weights(&whole.out) == weights(&opts.out),
        "resumed weights differ"
    );
}

/// The library names run settings (what `RUN/config.toml` and the HTTP API call them), never a
/// command-line flag: the binary turns "the `resume` setting" into `--resume` itself.
#[test]
fn library_errors_name_settings_not_flags() {
    let device = Device::flex();
    let mut c = config(Method::Sft, TrainableKind::Attention);
    c.steps = Some(1);
    c.val_fraction = 0.0;
    let cache = tempfile::tempdir().unwrap();
    let done = run_in(&c, cache.path(), &device).unwrap();
    let err = train(
        &c,
        &TrainOptions::new(&done.out, cache.path()),
        &device,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("already holds a run")
            && err.contains("the `resume` setting")
            && err.contains("the `force` setting")
            && !err.contains("--"),
        "{err}"
    );
}

/// Per-layer checkpoints and chunked log-probs reproduce the plain run's loss curve on real
/// checkpoints (f32, 1e-5), for families whose layers differ (Qwen2's biases and tied head,
/// Gemma 2's sliding windows, soft caps and sandwich norms, Gemma 3's local RoPE); and the
/// frozen weights in f16 follow it within their rounding.
#[test]
fn memory_savers_reproduce_the_loss_curve() {
    for name in ["qwen2", "gemma2", "gemma3_text"] {
        let mut plain = config(Method::Clo, TrainableKind::Attention);
        plain.model = fixture_dir(name);
        plain.steps = Some(8);
        plain.eval_every = Some(4);
        let mut saving = plain.clone();
        saving.grad_checkpoint = true;
        saving.logp_chunk = 5;
        let mut half = saving.clone();
        half.dtype = clo_core::load::models::Precision::F16;
        let curve = |c: &RunConfig| -> Vec<(f64, Option<f64>)> {
            metrics(&run(c, &Device::flex()).out)
                .iter()
                .map(|m| (m.loss, m.val_loss))
                .collect()
        };
        let (a, b, h) = (curve(&plain), curve(&saving), curve(&half));
        assert_eq!(a.len(), b.len());
        for (step, ((la, va), (lb, vb))) in a.iter().zip(&b).enumerate() {
            assert!(
                (la - lb).abs() < 1e-5,
                "{name} step {step}: loss {la} vs {lb}"
            );
            if let (Some(va), Some(vb)) = (va, vb) {
                assert!(
                    (va - vb).abs() < 1e-5,
                    "{name} step {step}: val {va} vs {vb}"
                );
            }
        }
        for (step, ((la, _), (lh, _))) in a.iter().zip(&h).enumerate() {
            assert!(
                (la - lh).abs() < 2e-2,
                "{name} step {step}: f16 loss {lh} vs {la}"
            );
        }
    }
}

/// The metrics of a fixed-seed CLO run (attention projections, gradient accumulation,
/// validation), the wall-clock fields aside, as committed in `fixtures/metrics/clo-seed11.jsonl`.
/// That file was written by the code before the step's split into parts
/// (`CLO_BLESS=1 cargo test --workspace --features clo/mpi --test train_run fixed_seed` rewrites
/// it); a refactoring of the step, the batches or the run must leave it unchanged.
/// `CLO_METRICS_EXACT=1` asks for the same bytes (what a refactoring is checked with, on the
/// machine that wrote the file). Otherwise, as another CPU's SIMD kernels sum in another order,
/// each number must agree to 1e-4 of its size (or 1e-4 absolute below 1: the first steps'
/// rewards are f32 rounding noise, around 1e-7), and the accuracies, which count the signs of
/// such margins, are left to the exact check.
#[test]
fn a_fixed_seed_clo_run_logs_the_committed_metrics() {
    let mut c = config(Method::Clo, TrainableKind::Attention);
    c.steps = Some(12);
    c.eval_every = Some(4);
    c.grad_accum = 2;
    c.seed = 11;
    let r = run(&c, &Device::flex());
    let text = std::fs::read_to_string(r.out.join("metrics.jsonl")).unwrap();
    let mut lines = String::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        let map = v.as_object_mut().unwrap();
        map.remove("tokens_per_s");
        map.remove("peak_mem_bytes");
        lines.push_str(&serde_json::to_string(&v).unwrap());
        lines.push('\n');
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/metrics/clo-seed11.jsonl");
    if std::env::var_os("CLO_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &lines).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    if std::env::var_os("CLO_METRICS_EXACT").is_some() {
        assert_eq!(
            lines,
            expected,
            "the metrics differ from {}",
            path.display()
        );
        return;
    }
    let (got, want): (Vec<&str>, Vec<&str>) = (lines.lines().collect(), expected.lines().collect());
    assert_eq!(got.len(), want.len(), "as many lines as {}", path.display());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let g: serde_json::Map<String, serde_json::Value> = serde_json::from_str(g).unwrap();
        let w: serde_json::Map<String, serde_json::Value> = serde_json::from_str(w).unwrap();
        assert_eq!(
            g.keys().collect::<Vec<_>>(),
            w.keys().collect::<Vec<_>>(),
            "line {}",
            i + 1
        );
        for (key, wv) in &w {
            if key.starts_with("acc_") {
                continue;
            }
            let gv = &g[key];
            match (gv.as_f64(), wv.as_f64()) {
                (Some(a), Some(b)) => assert!(
                    (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                    "line {} {key}: {a} against {b}",
                    i + 1
                ),
                _ => assert_eq!(gv, wv, "line {} {key}", i + 1),
            }
        }
    }
}
