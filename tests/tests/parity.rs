//! clo's model core against Hugging Face transformers.
//!
//! The fixtures and every expected number come from `tests/fixtures/make_fixtures.py`
//! (transformers 5.23, torch 2.15, CPU, float32, eager attention): tiny random checkpoints of
//! Llama 2 (sharded), Llama 3 (llama3 RoPE scaling, GQA 4:1), Mistral (sliding window 7 over
//! 47-token sequences, head_dim 24 != hidden/heads, f16 weights), Qwen2 (QKV bias, tied
//! embeddings, padded vocab), Qwen2 stored in bf16, Qwen3 (q/k head norms, head_dim 24),
//! Gemma 2 (GeGLU, sandwich norms, soft caps 3 and 5, sliding window), Gemma 3 text (q/k norms,
//! local RoPE base on sliding layers, linear scaling on the global one) and a Llama saved in
//! transformers 5's layout (chat_template.jinja, rope_parameters, generation_config.json). Run
//! the script to regenerate them (`make_fixtures.py NAME` for one).

use burn::prelude::*;
use burn::tensor::FloatDType;
use clo_core::Pretrained;
use clo_core::generate::{SamplingConfig, StopReason, generate, generate_batch};
use clo_core::score::{Pair, score_batch};
use clo_tests::{FAMILIES, expected, expected_logits, fixture_dir, max_abs_diff, wgpu_device};

const LOGIT_TOLERANCE: f32 = 1e-4;

fn logits_parity(device: &Device) {
    logits_parity_stored(device, FloatDType::F32, LOGIT_TOLERANCE);
}

/// Logits with the weights stored in `dtype` (`--dtype`) against transformers' f32 logits.
fn logits_parity_stored(device: &Device, dtype: FloatDType, tolerance: f32) -> f32 {
    let mut worst = 0f32;
    for name in FAMILIES {
        let mut lm = Pretrained::load(&fixture_dir(name), device).unwrap();
        lm.model = lm.model.store_frozen_in(dtype);
        let exp = expected(name);
        for (i, seq) in exp.sequences.iter().enumerate() {
            let ids: Vec<i64> = seq.ids.iter().map(|&t| t as i64).collect();
            let input =
                Tensor::<2, Int>::from_data(TensorData::new(ids, [1, seq.ids.len()]), device);
            let logits = lm.model.forward(input, None);
            let got: Vec<f32> = logits.into_data().try_into_vec_as::<f32>().unwrap();
            let (shape, want) = expected_logits(name, i);
            assert_eq!(shape, vec![seq.ids.len(), lm.config.decoder.vocab_size]);
            let diff = max_abs_diff(&got, &want);
            assert!(
                diff <= tolerance,
                "{name} {dtype:?} sequence {i}: max |logit diff| = {diff}"
            );
            worst = worst.max(diff);
        }
    }
    worst
}

/// Weights stored in half precision (`--dtype f16|bf16`): the logits stay within the rounding
/// of the storage type of transformers' f32 ones. Measured worst |logit diff| over the
/// fixtures (CPU): f16 0.045, bf16 0.32, both on Gemma 3 (most families: f16 0.005-0.013, bf16
/// 0.04-0.12); lavapipe's f16 the same as the CPU's.
#[test]
fn half_precision_logits_stay_near_transformers() {
    let device = Device::flex();
    let f16 = logits_parity_stored(&device, FloatDType::F16, HALF_TOLERANCE[0]);
    let bf16 = logits_parity_stored(&device, FloatDType::BF16, HALF_TOLERANCE[1]);
    eprintln!("half precision worst |logit diff|: f16 {f16}, bf16 {bf16}");
    // The rounding is there: bf16 (8 mantissa bits) is coarser than f16 (11).
    assert!(
        f16 > LOGIT_TOLERANCE / 10.0 && bf16 > f16,
        "f16 {f16}, bf16 {bf16}"
    );
    // On wgpu where the adapter has shader-f16 (lavapipe may not).
    let gpu = wgpu_device();
    if gpu.supports_dtype(FloatDType::F16) {
        let diff = logits_parity_stored(&gpu, FloatDType::F16, HALF_TOLERANCE[0]);
        eprintln!("wgpu f16 worst |logit diff|: {diff}");
    } else {
        eprintln!("this wgpu adapter has no f16: the wgpu half check is skipped");
    }
}

/// f16 and bf16 tolerances (absolute, on logits of magnitude up to ~5): twice the worst
/// difference measured over the fixtures.
const HALF_TOLERANCE: [f32; 2] = [0.1, 0.6];

#[test]
fn logits_match_transformers_on_cpu() {
    logits_parity(&Device::flex());
}

#[test]
fn logits_match_transformers_on_wgpu() {
    logits_parity(&wgpu_device());
}

/// With a KV cache, feeding a sequence in pieces gives the logits of one full pass.
#[test]
fn kv_cache_matches_full_pass() {
    let device = Device::flex();
    for name in ["mistral", "llama3"] {
        let lm = Pretrained::load(&fixture_dir(name), &device).unwrap();
        let seq = &expected(name).sequences[0].ids;
        let (want_shape, want) = expected_logits(name, 0);
        let mut cache = clo_core::models::KvCache::new(lm.config.decoder.num_layers);
        let mut got = Vec::new();
        for piece in [&seq[..5], &seq[5..6], &seq[6..20], &seq[20..]] {
            let ids: Vec<i64> = piece.iter().map(|&t| t as i64).collect();
            let input =
                Tensor::<2, Int>::from_data(TensorData::new(ids, [1, piece.len()]), &device);
            let logits = lm.model.forward(input, Some(&mut cache));
            got.extend(logits.into_data().try_into_vec_as::<f32>().unwrap());
        }
        assert_eq!(cache.len(), want_shape[0]);
        let diff = max_abs_diff(&got, &want);
        assert!(
            diff <= LOGIT_TOLERANCE,
            "{name}: cached pieces differ by {diff}"
        );
    }
}

#[test]
fn greedy_generation_equals_transformers() {
    let device = Device::flex();
    for name in FAMILIES {
        let lm = Pretrained::load(&fixture_dir(name), &device).unwrap();
        for case in expected(name).greedy {
            let prompt = lm.tokenizer.prompt_ids(&case.prompt, false).unwrap();
            assert_eq!(
                prompt, case.prompt_ids,
                "{name}: tokenization of {:?}",
                case.prompt
            );
            let config = SamplingConfig {
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
                max_new_tokens: 12,
            };
            let out = generate(
                &lm.model,
                &prompt,
                lm.tokenizer.eos_ids(),
                &config,
                &device,
                |_| {},
            );
            // transformers keeps the EOS it stopped on; clo reports it as the stop reason.
            let mut got = out.ids.clone();
            if out.stop == StopReason::Eos {
                got.push(lm.tokenizer.eos_ids()[0]);
            }
            assert_eq!(
                got, case.new_ids,
                "{name}: greedy continuation of {:?}",
                case.prompt
            );
        }
    }
}

/// All greedy cases of a family decoded in one left-padded batch (prompts of different lengths,
/// Mistral's sliding window included) give transformers' continuations, row by row.
#[test]
fn batched_greedy_generation_equals_transformers() {
    let device = Device::flex();
    for name in FAMILIES {
        let lm = Pretrained::load(&fixture_dir(name), &device).unwrap();
        let cases = expected(name).greedy;
        let lengths: Vec<usize> = cases.iter().map(|c| c.prompt_ids.len()).collect();
        assert!(
            lengths.iter().any(|&l| l != lengths[0]),
            "{name}: the fixture's prompts should differ in length to exercise padding"
        );
        let prompts: Vec<Vec<u32>> = cases.iter().map(|c| c.prompt_ids.clone()).collect();
        let configs = vec![
            SamplingConfig {
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
                max_new_tokens: 12,
            };
            prompts.len()
        ];
        let eos = lm.tokenizer.eos_ids();
        let outs = generate_batch(&lm.model, &prompts, eos, &configs, &device, |_, _| {});
        for (case, out) in cases.iter().zip(outs) {
            let mut got = out.ids.clone();
            if out.stop == StopReason::Eos {
                got.push(eos[0]);
            }
            assert_eq!(
                got, case.new_ids,
                "{name}: batched continuation of {:?}",
                case.prompt
            );
        }
    }
}

#[test]
fn scores_match_transformers() {
    let device = Device::flex();
    for name in FAMILIES {
        let lm = Pretrained::load(&fixture_dir(name), &device).unwrap();
        let cases = expected(name).scores;
        let pairs: Vec<Pair> = cases
            .iter()
            .map(|c| {
                let prompt = lm.tokenizer.prompt_ids(&c.prompt, c.chat_template).unwrap();
                let response = lm.tokenizer.response_ids(&c.response).unwrap();
                assert_eq!(
                    prompt, c.prompt_ids,
                    "{name}: prompt ids (chat {})",
                    c.chat_template
                );
                assert_eq!(response, c.response_ids, "{name}: response ids");
                Pair { prompt, response }
            })
            .collect();
        // One padded batch: padding must not change any score.
        let scores = score_batch(&lm.model, &pairs, &device);
        for (got, want) in scores.iter().zip(&cases) {
            assert_eq!(got.n_tokens, want.n_tokens);
            for (g, w) in got.token_logps.iter().zip(&want.token_logps) {
                assert!((g - w).abs() <= 1e-4, "{name}: token logp {g} vs {w}");
            }
            assert!(
                (got.logp - want.logp).abs() <= 1e-3,
                "{name}: logp {} vs {}",
                got.logp,
                want.logp
            );
        }
    }
}

#[test]
fn chat_templates_render_like_transformers() {
    let mut checked = 0;
    for name in FAMILIES {
        let lm_dir = fixture_dir(name);
        let config = clo_core::models::ModelConfig::from_file(&lm_dir.join("config.json")).unwrap();
        let tok =
            clo_core::tokenizer::ChatTokenizer::from_dir(&lm_dir, &config.eos_token_ids).unwrap();
        for t in expected(name).templates {
            assert_eq!(tok.render_prompt(&t.prompt).unwrap(), t.rendered, "{name}");
            checked += 1;
        }
    }
    assert!(
        checked >= 14,
        "templates of llama3, mistral, qwen2, qwen3, gemma2, gemma3_text and llama-t5 are covered"
    );
}

/// A checkpoint saved by transformers 5 keeps its template in chat_template.jinja and its EOS
/// in generation_config.json; clo finds both and says where the template came from.
#[test]
fn transformers5_layout_finds_template_file_and_eos() {
    let dir = fixture_dir("llama-t5");
    let tok_config = std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap();
    assert!(
        !tok_config.contains("chat_template"),
        "the fixture keeps the template out"
    );
    let summary = Pretrained::summarize(&dir).unwrap();
    assert!(summary.chat_template);
    assert_eq!(
        summary.chat_template_file.as_deref(),
        Some(dir.join("chat_template.jinja").as_path())
    );
    let lm = Pretrained::load(&dir, &Device::flex()).unwrap();
    let rendered = lm.tokenizer.render_prompt("Hi").unwrap();
    assert!(
        rendered.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"),
        "{rendered}"
    );
    // generation_config.json's eos_token_id (2) is among the stop ids.
    assert!(
        lm.tokenizer.eos_ids().contains(&2),
        "{:?}",
        lm.tokenizer.eos_ids()
    );
}

#[test]
fn parameter_counts_match_transformers() {
    for name in FAMILIES {
        let summary = Pretrained::summarize(&fixture_dir(name)).unwrap();
        assert_eq!(
            summary.num_parameters,
            expected(name).num_parameters,
            "{name}"
        );
    }
}

/// A base model (no chat_template) asked for a chat prompt gets the plain fallback, with the
/// tokenizer's BOS, and the response still ends with EOS.
#[test]
fn base_model_chat_prompt_uses_plain_fallback() {
    let dir = fixture_dir("llama");
    let config = clo_core::models::ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let tok = clo_core::tokenizer::ChatTokenizer::from_dir(&dir, &config.eos_token_ids).unwrap();
    assert!(!tok.has_chat_template());
    let rendered = clo_core::tokenizer::PLAIN_TEMPLATE.replace("{prompt}", "Habari?");
    assert_eq!(tok.render_prompt("Habari?").unwrap(), rendered);
    let ids = tok.prompt_ids("Habari?", true).unwrap();
    assert_eq!(ids, tok.encode(&rendered, true).unwrap());
    assert_eq!(ids[0], config.bos_token_id.unwrap(), "starts with BOS");
    assert_eq!(
        tok.response_ids("ndiyo").unwrap().last(),
        config.eos_token_ids.first()
    );
}

/// A conversation (system, user, assistant, user), as `clo serve`'s chat endpoint renders it,
/// equals transformers' `apply_chat_template(..., add_generation_prompt=True)`
/// (`tests/fixtures/make_chat_fixture.py` -> `chat_multi.json`); a template that refuses it
/// (Mistral's, on a system message) is an error here too; without a template the contents
/// fill the plain fallback.
#[test]
fn conversations_render_as_transformers_does() {
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir("llama").join("../../chat_multi.json")).unwrap(),
    )
    .unwrap();
    let messages: Vec<(&str, &str)> = fixture["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    for family in ["llama", "llama3", "mistral", "qwen2"] {
        let dir = fixture_dir(family);
        let config = clo_core::models::ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let tok =
            clo_core::tokenizer::ChatTokenizer::from_dir(&dir, &config.eos_token_ids).unwrap();
        let ours = tok.render_chat(&messages);
        match (&fixture["rendered"][family], tok.has_chat_template()) {
            (serde_json::Value::String(hf), _) => {
                assert_eq!(&ours.unwrap(), hf, "{family}");
                assert_eq!(
                    tok.chat_ids(&messages).unwrap(),
                    tok.encode(hf, false).unwrap()
                );
            }
            (_, true) => assert!(ours.is_err(), "{family}: transformers refused it"),
            (_, false) => assert_eq!(
                ours.unwrap(),
                clo_core::tokenizer::PLAIN_TEMPLATE.replace(
                    "{prompt}",
                    "You answer briefly.\n\nHabari?\n\nNzuri sana.\n\nNa wewe je?"
                ),
                "{family}"
            ),
        }
    }
}
