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
    let config = RunConfig {
        model: fixture_dir("qwen2"),
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
