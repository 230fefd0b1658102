//! Broken model directories give errors that name the file, the tensor or field, and what was
//! expected.

use burn::prelude::*;
use clo_core::Pretrained;
use clo_tests::copy_fixture;

fn load_err(dir: &std::path::Path) -> String {
    let err = Pretrained::load(dir, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HINT"),
        "every error suggests a next step: {err}"
    );
    err
}

#[test]
fn missing_tokenizer_is_named() {
    let dir = copy_fixture("qwen2");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("missing tokenizer") && err.contains("tokenizer.json"),
        "{err}"
    );
}

#[test]
fn missing_shard_is_named() {
    let dir = copy_fixture("llama");
    std::fs::remove_file(dir.path().join("model-00002-of-00003.safetensors")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("model-00002-of-00003.safetensors"), "{err}");
}

#[test]
fn truncated_safetensors_is_reported_with_the_tensor() {
    let dir = copy_fixture("qwen2");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
    assert!(
        err.contains("tensor `"),
        "names the tensor that runs past the end: {err}"
    );
}

#[test]
fn corrupt_header_is_reported() {
    let dir = copy_fixture("qwen2");
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = b'#';
    std::fs::write(&path, &bytes).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("header is not JSON"),
        "{err}"
    );
}

#[test]
fn shape_mismatch_names_tensor_expected_and_got() {
    let dir = copy_fixture("qwen2");
    // Claim more key/value heads than the checkpoint has.
    let path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 4"),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.layers.0.self_attn.k_proj.weight")
            && err.contains("expected shape [64, 64], got [32, 64]"),
        "{err}"
    );
}

#[test]
fn unknown_model_type_is_refused() {
    let dir = copy_fixture("llama");
    let path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace("\"model_type\": \"llama\"", "\"model_type\": \"falcon\""),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("`model_type` = \"falcon\""),
        "{err}"
    );
}

#[test]
fn tokenizer_larger_than_model_vocab_is_refused() {
    let dir = copy_fixture("llama");
    let path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace("\"vocab_size\": 300", "\"vocab_size\": 200"),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("300 tokens") && err.contains("vocab_size = 200"),
        "{err}"
    );
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("qwen2");
    // A tied model's checkpoint lacks lm_head.weight: untying it must name the missing tensor.
    let path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace(
            "\"tie_word_embeddings\": true",
            "\"tie_word_embeddings\": false",
        ),
    )
    .unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("tensor `lm_head.weight` is missing"), "{err}");
}
