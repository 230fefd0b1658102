//! Trainable sets: after a real AdamW step on the CLO loss, exactly the chosen parameters have
//! changed and every other weight is bit-identical.

use std::collections::BTreeMap;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::store::ModuleSnapshot;
use clo_core::Pretrained;
use clo_core::models::CausalLm;
use clo_core::score::{batch_logps, collate};
use clo_core::train::batch::{TokenizedQuad, clo_rows, tokenize_quads};
use clo_core::train::data::Quadruple;
use clo_core::train::loss::{NllReduction, clo_loss};
use clo_core::train::trainable::Trainable;
use clo_tests::{fixture_dir, loss_fixture};

/// Raw bytes of every tensor, by module path.
fn snapshot(model: &CausalLm) -> BTreeMap<String, Vec<u8>> {
    model
        .collect(None, None, false)
        .into_iter()
        .map(|t| (t.name.clone(), t.to_bytes().unwrap().to_vec()))
        .collect()
}

fn quads() -> Vec<Quadruple> {
    serde_json::from_value(loss_fixture()["quadruples"].clone()).unwrap()
}

/// One CLO step with AdamW (lr 1e-2); returns the model before and after.
fn one_step(trainable: Trainable) -> (CausalLm, CausalLm) {
    let device = Device::flex().autodiff();
    let lm = Pretrained::load(&fixture_dir("qwen2"), &device).unwrap();
    let (tokenized, _) = tokenize_quads(&lm.tokenizer, &quads(), 80).unwrap();
    let refs: Vec<&TokenizedQuad> = tokenized.iter().collect();
    let batch = collate(&clo_rows(&refs, 80), &device);

    let before = lm.model;
    let (reference, _) = batch_logps(&before.valid(), &batch);
    let model = trainable.apply(before.clone()).unwrap();
    let (policy, _) = batch_logps(&model, &batch);
    let n = tokenized.len();
    let tgt_tokens: Vec<f32> = batch.n_tokens[2 * n..3 * n]
        .iter()
        .map(|&t| t as f32)
        .collect();
    let tgt_tokens = Tensor::<1>::from_data(TensorData::new(tgt_tokens, [n]), &device);
    let terms = clo_loss(
        policy,
        reference.detach(),
        tgt_tokens,
        0.1,
        0.5,
        NllReduction::TokenMean,
    );
    let grads = GradientsParams::from_grads(terms.loss.backward(), &model);
    let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
    let after = optim.step(1e-2, model, grads);
    (before, after)
}

fn is_attention(name: &str) -> bool {
    ["q_proj", "k_proj", "v_proj", "o_proj"]
        .iter()
        .any(|p| name.contains(&format!("self_attn.{p}")))
}

#[test]
fn attention_trains_q_k_v_o_and_nothing_else() {
    let (before, after) = one_step(Trainable::Attention { layers: None });
    let (b, a) = (snapshot(&before), snapshot(&after));
    assert_eq!(b.keys().collect::<Vec<_>>(), a.keys().collect::<Vec<_>>());
    let mut changed = 0;
    for (name, bytes) in &b {
        if is_attention(name) {
            assert_ne!(bytes, &a[name], "{name} should train");
            changed += 1;
        } else {
            assert_eq!(bytes, &a[name], "{name} must stay bit-identical");
        }
    }
    // 2 layers x (q, k, v with bias + o without) = 14 tensors.
    assert_eq!(changed, 14);
}

#[test]
fn attention_layer_range_trains_only_those_layers() {
    let (before, after) = one_step(Trainable::Attention {
        layers: Some([1, 2]),
    });
    let (b, a) = (snapshot(&before), snapshot(&after));
    for (name, bytes) in &b {
        let trains = is_attention(name) && name.starts_with("model.layers.1.");
        assert_eq!(bytes != &a[name], trains, "{name}: trains = {trains}");
    }
}

#[test]
fn full_trains_everything() {
    let (before, after) = one_step(Trainable::Full);
    let (b, a) = (snapshot(&before), snapshot(&after));
    for (name, bytes) in &b {
        assert_ne!(bytes, &a[name], "{name} should train");
    }
}

#[test]
fn bad_layer_range_is_refused() {
    let device = Device::flex();
    let lm = Pretrained::load(&fixture_dir("qwen2"), &device).unwrap();
    let err = Trainable::Attention {
        layers: Some([1, 5]),
    }
    .apply(lm.model)
    .unwrap_err()
    .to_string();
    assert!(err.contains("[1, 5)") && err.contains("2 layers"), "{err}");
}

#[test]
fn lora_trains_adapters_and_leaves_the_base_bit_identical() {
    let trainable = Trainable::Lora {
        rank: 4,
        alpha: 8.0,
        targets: vec!["q_proj".into(), "v_proj".into()],
    };
    let (before, after) = one_step(trainable);
    let (b, a) = (snapshot(&before), snapshot(&after));
    for (name, bytes) in &b {
        if let Some(now) = a.get(name) {
            assert_eq!(bytes, now, "{name}: the LoRA base must stay bit-identical");
        }
    }
    let adapters: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    assert!(
        !adapters.is_empty(),
        "adapter tensors appear: {:?}",
        a.keys().collect::<Vec<_>>()
    );
    assert!(
        adapters
            .iter()
            .all(|k| k.contains("q_proj") || k.contains("v_proj")),
        "{adapters:?}"
    );

    // The adapted model computes something else than the base after one step.
    let device = Device::flex();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![5i64, 17, 42, 7], [1, 4]), &device);
    let diff = (before.valid().forward(ids.clone(), None) - after.valid().forward(ids, None))
        .abs()
        .max()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()[0];
    assert!(diff > 1e-6, "LoRA step changed nothing");
}

#[test]
fn unknown_lora_target_is_refused() {
    let lm = Pretrained::load(&fixture_dir("qwen2"), &Device::flex()).unwrap();
    let err = Trainable::Lora {
        rank: 4,
        alpha: 8.0,
        targets: vec!["qkv".into()],
    }
    .apply(lm.model)
    .unwrap_err()
    .to_string();
    assert!(err.contains("`qkv`") && err.contains("q_proj"), "{err}");
}
