//! `clo merge` as a user runs it: parity with plain numpy arithmetic
//! (`tests/fixtures/make_merge_fixtures.py`), layer swaps that are the identity or bit-equal to
//! the expert, runs as experts, and bad input refused with nothing written.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::{clo, fixtures, refused, s, stderr};
use safetensors::SafeTensors;

fn tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
            let values = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (v.shape().to_vec(), values))
        })
        .collect()
}

fn max_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "tensor names"
    );
    let mut worst = 0f32;
    for (name, (shape, values)) in &a {
        assert_eq!(shape, &b[name].0, "{name}");
        for (x, y) in values.iter().zip(&b[name].1) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

fn merge(out: &Path, task: &Path, language: &Path, extra: &[&str]) -> Output {
    let base = fixtures().join("models/qwen2");
    let mut args = vec![
        "merge",
        "--base",
        s(&base),
        "--task",
        s(task),
        "--language",
        s(language),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    clo(&args)
}

/// Both recipes give what plain numpy arithmetic gives (<= 1e-6), the recipe is in the
/// config, and the merged model loads and generates.
#[test]
fn merges_match_the_numpy_reference() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixtures().join("merge");
    let (task, language) = (m.join("task"), m.join("language"));
    for (name, extra, expected) in [
        (
            "swap",
            &["--swap-layers", "1", "--revert-below", "0.3"][..],
            "expected-swap.safetensors",
        ),
        (
            "arith",
            &["--weights", "0.7,0.4", "--revert-below", "0.5"][..],
            "expected-arith.safetensors",
        ),
    ] {
        let out = dir.path().join(name);
        let o = merge(&out, &task, &language, extra);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let diff = max_diff(&out.join("model.safetensors"), &m.join(expected));
        assert!(diff <= 1e-6, "{name}: {diff}");
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert!(config["clo_merge"].is_object(), "{config}");
        let g = clo(&[
            "generate",
            "--model",
            s(&out),
            "--prompt",
            "hi",
            "--max-new-tokens",
            "3",
        ]);
        assert!(g.status.success(), "{name}: {}", stderr(&g));
    }
    // The swap recipe says so; the arithmetic one names its weights.
    let swap: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("swap/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(swap["clo_merge"]["swap_layers"], serde_json::json!(["1-1"]));
    assert_eq!(swap["clo_merge"]["revert_below"], 0.3);
}

/// A swap of identical experts is the identity, and a swap's tensors are bit-equal to the
/// expert each comes from.
#[test]
fn swaps_take_each_tensor_whole_from_one_expert() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixtures().join("merge");
    let (task, language) = (m.join("task"), m.join("language"));
    let same = dir.path().join("same");
    let o = merge(&same, &task, &task, &["--swap-layers", "0-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        tensors(&same.join("model.safetensors")),
        tensors(&task.join("model.safetensors"))
    );
    let out = dir.path().join("swap");
    let o = merge(&out, &task, &language, &["--swap-layers", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let merged = tensors(&out.join("model.safetensors"));
    let (t, l) = (
        tensors(&task.join("model.safetensors")),
        tensors(&language.join("model.safetensors")),
    );
    for (name, value) in &merged {
        let from = if name.contains(".layers.1.") { &l } else { &t };
        assert_eq!(value, &from[name], "{name}");
    }
    assert!(String::from_utf8_lossy(&o.stdout).contains("from the language expert"));
}

/// A run directory is an expert (its best weights); a run trained from another base is
/// refused, as are bad recipes and another architecture, with nothing written.
#[test]
fn runs_merge_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = fixtures().join("merge");
    let (task, language) = (m.join("task"), m.join("language"));
    let data = fixtures().join("data/quads.jsonl");
    let cache = dir.path().join("cache");
    let train = |model: &Path, out: &Path| {
        let o = clo(&[
            "train",
            "--model",
            s(model),
            "--data",
            s(&data),
            "--out",
            s(out),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--val-fraction",
            "0",
            "--method",
            "sft",
            "--cache-dir",
            s(&cache),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let run = dir.path().join("run");
    train(&fixtures().join("models/qwen2"), &run);
    let out = dir.path().join("from-run");
    let o = merge(&out, &run, &language, &["--swap-layers", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("model.safetensors").is_file());

    let foreign = dir.path().join("foreign");
    train(&task, &foreign);
    let llama = fixtures().join("models/llama");
    let cases: Vec<(Vec<&str>, &Path, &str)> = vec![
        (vec!["--swap-layers", "0-1,1"], &language, "overlap"),
        (vec!["--swap-layers", "5"], &language, "out of range"),
        (vec!["--revert-below", "1.5"], &language, "between 0 and 1"),
        (vec!["--revert-below", "0"], &language, "between 0 and 1"),
        (vec![], &llama, "tensor"),
    ];
    for (i, (extra, lang, expect)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("bad{i}"));
        let msg = refused(&merge(&out, &task, lang, extra));
        assert!(msg.contains(expect), "{extra:?}: {msg}");
        assert!(!out.exists(), "{extra:?} wrote {}", out.display());
    }
    let out = dir.path().join("bad-base");
    let msg = refused(&merge(&out, &foreign, &language, &[]));
    assert!(msg.contains("weights differ"), "{msg}");
    assert!(!out.exists());
}
