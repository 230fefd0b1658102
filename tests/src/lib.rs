//! Helpers shared by clo's end-to-end tests: the parity fixtures made by
//! `tests/fixtures/make_fixtures.py` (transformers on CPU, float32, eager attention).

use std::path::{Path, PathBuf};

use burn::prelude::*;
use serde::Deserialize;

/// The fixture model directories, one per family and storage variant.
pub const FAMILIES: [&str; 10] = [
    "llama",
    "llama3",
    "mistral",
    "qwen2",
    "qwen2-bf16",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "llama-t5",
    "mistral-spm",
];

pub fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/models")
        .join(name)
}

#[derive(Debug, Deserialize)]
pub struct Sequence {
    pub text: String,
    pub ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
pub struct ScoreCase {
    pub prompt: String,
    pub response: String,
    pub chat_template: bool,
    pub prompt_ids: Vec<u32>,
    pub response_ids: Vec<u32>,
    pub logp: f64,
    pub n_tokens: usize,
    pub token_logps: Vec<f64>,
}

#[derive(Debug, Deserialize)]
pub struct Greedy {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub new_ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
pub struct Template {
    pub prompt: String,
    pub rendered: String,
}

/// What transformers computed on a fixture (`expected.json`).
#[derive(Debug, Deserialize)]
pub struct Expected {
    pub sequences: Vec<Sequence>,
    pub scores: Vec<ScoreCase>,
    pub greedy: Vec<Greedy>,
    pub templates: Vec<Template>,
    pub num_parameters: usize,
}

pub fn expected(name: &str) -> Expected {
    let text =
        std::fs::read_to_string(fixture_dir(name).join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json parses")
}

/// `fixtures/losses.json` of `make_loss_fixture.py`: quadruples, rows, log-probs and losses.
pub fn loss_fixture() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/losses.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("losses.json"))
        .expect("losses.json parses")
}

/// Logits transformers computed for sequence `i`, `[seq, vocab]` flattened row-major.
pub fn expected_logits(name: &str, i: usize) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture_dir(name).join("expected.safetensors"))
        .expect("expected.safetensors");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let view = file.tensor(&format!("logits_{i}")).expect("logits tensor");
    let data = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), data)
}

/// Largest absolute difference between two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The wgpu device the tests use: the default adapter (Mesa lavapipe on CI).
pub fn wgpu_device() -> Device {
    Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)
}

/// Copies a fixture into a fresh temporary directory, so a test can damage it.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(fixture_dir(name)).expect("fixture exists") {
        let entry = entry.expect("dir entry");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
    }
    dir
}

/// Runs `tests/fixtures/SCRIPT` with `python` on `spec` (written as JSON beside it in `dir`) and
/// returns its stdout; a failing script fails the test with its whole output.
pub fn run_python_check(
    python: &str,
    script: &str,
    spec: &serde_json::Value,
    dir: &Path,
) -> String {
    let path = dir.join(format!("{script}.spec.json"));
    std::fs::write(&path, spec.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(script);
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
