//! The training step: losses against PyTorch's, savers that change nothing but memory, shards, read-back.
use super::*;
use crate::infer::score::Pair;
use crate::infer::score::{batch_logps, collate};
use crate::load::models::AttentionKind;
use crate::train::loss::NllReduction;
use crate::train::pretrain::tiny_test_decoder;

fn tiny() -> CausalLm {
    let device = Device::flex().autodiff();
    crate::seeded(&device, 7, || tiny_test_decoder().init(&device).unfreeze())
}

fn pair(seed: u32, len: usize) -> Pair {
    Pair {
        prompt: vec![seed % 300, (seed * 7) % 300],
        response: (0..len as u32).map(|t| (seed * 13 + t * 5) % 300).collect(),
    }
}

fn clo_batch() -> MicroBatch {
    // Two quadruples: 4 blocks of 2 rows.
    MicroBatch {
        rows: (0..8).map(|r| pair(r + 1, 2 + r as usize % 3)).collect(),
        reference: (0..8).map(|r| -10.0 - r as f32).collect(),
        english: Vec::new(),
    }
}

fn clo() -> Objective {
    Objective::Clo {
        beta: 0.1,
        lambda: 0.5,
        reduction: NllReduction::TokenMean,
        dpop: 0.0,
    }
}

fn weights(model: &CausalLm) -> Vec<f32> {
    model.model.layers[0]
        .self_attn
        .q_proj
        .weight
        .val()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

use crate::ready;

/// The step's loss and rewards are those of the loss functions on the same log-probs, and
/// the blocking and the async step give the same numbers and the same weights.
#[test]
fn step_reports_the_losses_and_the_async_step_matches() {
    let batch = clo_batch();
    let model = tiny();
    let (policy, _) = batch_logps(
        &model.valid(),
        &collate(&batch.rows, &model.device().inner()),
    );
    let reference = Tensor::<1>::from_data(
        TensorData::new(batch.reference.clone(), [8]),
        &model.device().inner(),
    );
    let counts: Vec<f32> = batch.rows[4..6]
        .iter()
        .map(|r| r.response.len() as f32)
        .collect();
    let counts = Tensor::<1>::from_data(TensorData::new(counts, [2]), &model.device().inner());
    let terms =
        super::super::loss::clo_loss(policy, reference, counts, 0.1, 0.5, NllReduction::TokenMean);
    let expect = terms.loss.into_scalar::<f32>() as f64;
    let expect_en: Vec<f32> = terms
        .en
        .chosen_rewards
        .into_data()
        .convert::<f32>()
        .try_into_vec()
        .unwrap();

    let mut a = Trainer::new(clo(), OptimizerSettings::fine_tuning(0.0, 1.0));
    let (ma, ra) = a
        .step(model.clone(), std::slice::from_ref(&batch), 1e-3)
        .unwrap();
    assert!((ra.loss - expect).abs() < 1e-5, "{} vs {expect}", ra.loss);
    assert!(ra.applied && ra.grad_norm > 0.0);
    assert_eq!(ra.pairs.len(), 4);
    let en: Vec<f64> = ra.pairs.iter().filter(|p| p.0).map(|p| p.1).collect();
    for (x, y) in en.iter().zip(&expect_en) {
        assert!((x - f64::from(*y)).abs() < 1e-5, "{en:?} vs {expect_en:?}");
    }
    assert_eq!(ra.tokens, batch.tokens());

    let mut b = Trainer::new(clo(), OptimizerSettings::fine_tuning(0.0, 1.0));
    let (mb, rb) = ready(b.step_async(model.clone(), std::slice::from_ref(&batch), 1e-3)).unwrap();
    assert_eq!(ra, rb);
    assert_eq!(weights(&ma), weights(&mb));
    assert_ne!(weights(&ma), weights(&model), "the update was applied");
}

/// A non-finite loss leaves the weights as they were and says so.
#[test]
fn a_non_finite_step_is_not_applied() {
    let mut batch = clo_batch();
    batch.reference[0] = f32::NAN;
    let model = tiny();
    let mut t = Trainer::new(clo(), OptimizerSettings::fine_tuning(0.0, 1.0));
    let (after, report) = t.step(model.clone(), &[batch], 1e-2).unwrap();
    assert!(!report.applied);
    assert_eq!(report.non_finite(), Some("loss"));
    assert_eq!(weights(&after), weights(&model));
}

/// Two micro-batches accumulate to the mean of their gradients; a malformed batch is an error.
#[test]
fn micro_batches_accumulate_and_bad_batches_are_refused() {
    let sft = Objective::Sft {
        reduction: NllReduction::SequenceMean,
    };
    let rows: Vec<Pair> = (0..4).map(|r| pair(r + 3, 3)).collect();
    let whole = MicroBatch {
        rows: rows.clone(),
        ..Default::default()
    };
    let halves = [
        MicroBatch {
            rows: rows[..2].to_vec(),
            ..Default::default()
        },
        MicroBatch {
            rows: rows[2..].to_vec(),
            ..Default::default()
        },
    ];
    let model = tiny();
    let settings = OptimizerSettings::fine_tuning(0.0, 0.0);
    let (_, one) = Trainer::new(sft, settings)
        .step(model.clone(), &[whole], 1e-3)
        .unwrap();
    let (_, two) = Trainer::new(sft, settings)
        .step(model.clone(), &halves, 1e-3)
        .unwrap();
    // Equal halves: the mean of the halves' sequence means is the whole's mean.
    assert!((one.loss - two.loss).abs() < 1e-5);
    assert!((one.grad_norm - two.grad_norm).abs() < 1e-4 * one.grad_norm.max(1.0));

    let mut t = Trainer::new(clo(), settings);
    let err = t
        .step(
            model.clone(),
            &[MicroBatch {
                rows: rows[..3].to_vec(),
                ..Default::default()
            }],
            1e-3,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("whole examples"), "{err}");
    let err = t
        .step(
            model,
            &[MicroBatch {
                rows: rows.clone(),
                ..Default::default()
            }],
            1e-3,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("reference"), "{err}");
}

/// Every float parameter's values, in visiting order.
fn all_weights(model: &CausalLm) -> Vec<f32> {
    struct All(Vec<f32>);
    impl burn::module::ModuleVisitor for All {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            self.0.extend(
                param
                    .val()
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .unwrap(),
            );
        }
    }
    let mut all = All(Vec::new());
    burn::module::Module::visit(model, &mut all);
    all.0
}

/// Data parallelism: a batch split across replicas (here two on the CPU, three examples so
/// the shards are uneven) gives each step's loss and the final weights of one device with
/// the same batch, for CLO, DPO and SFT, with attention-only and LoRA training.
#[test]
fn replicas_equal_one_device() {
    use crate::train::trainable::Trainable;
    let quads = MicroBatch {
        rows: (0..12).map(|r| pair(r + 1, 2 + r as usize % 4)).collect(),
        reference: (0..12).map(|r| -9.0 - r as f32 * 0.7).collect(),
        english: Vec::new(),
    };
    let pairs = MicroBatch {
        rows: (0..6).map(|r| pair(r + 2, 1 + r as usize % 3)).collect(),
        reference: (0..6).map(|r| -5.0 - r as f32).collect(),
        english: vec![true, false, true],
    };
    let sft_rows = MicroBatch {
        rows: (0..3).map(|r| pair(r + 4, 2 + r as usize)).collect(),
        ..Default::default()
    };
    let cases = [
        (clo(), quads.clone()),
        (
            Objective::Clo {
                beta: 0.5,
                lambda: 0.3,
                reduction: NllReduction::SequenceMean,
                dpop: 0.0,
            },
            quads,
        ),
        (
            Objective::Dpo {
                beta: 0.2,
                dpop: 0.0,
            },
            pairs,
        ),
        (
            Objective::Sft {
                reduction: NllReduction::TokenMean,
            },
            sft_rows,
        ),
    ];
    let trainables = [
        Trainable::Attention { layers: None },
        Trainable::Lora {
            rank: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into(), "v_proj".into()],
        },
    ];
    for trainable in &trainables {
        for (objective, batch) in &cases {
            let start = trainable.apply(tiny()).unwrap();
            let run = |replicas: &[Device]| {
                let mut t = Trainer::new(*objective, OptimizerSettings::fine_tuning(0.01, 1.0))
                    .with_replicas(replicas);
                let mut model = start.clone();
                let mut losses = Vec::new();
                for _ in 0..3 {
                    let (next, report) = t.step(model, std::slice::from_ref(batch), 1e-2).unwrap();
                    assert!(report.applied);
                    losses.push((report.loss, report.grad_norm, report.pairs.len()));
                    model = next;
                }
                (losses, all_weights(&model))
            };
            let (one, w1) = run(&[]);
            let (two, w2) = run(&[Device::flex()]);
            let what = format!("{objective:?} {trainable:?}");
            for ((l1, g1, p1), (l2, g2, p2)) in one.iter().zip(&two) {
                assert!(
                    (l1 - l2).abs() <= 1e-5 * l1.abs().max(1.0),
                    "{what}: loss {l1} vs {l2}"
                );
                assert!(
                    (g1 - g2).abs() <= 1e-4 * g1.abs().max(1.0),
                    "{what}: norm {g1} vs {g2}"
                );
                assert_eq!(p1, p2, "{what}");
            }
            assert_ne!(w1, all_weights(&start), "{what}: the steps trained");
            let worst = w1
                .iter()
                .zip(&w2)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1e-5, "{what}: weights differ by {worst}");
        }
    }
}

/// Chunked log-probs (the two-phase backward of `head_backward`), per-layer
/// checkpoints (`micro_gradients`, alone and with chunks) and memory-efficient attention
/// (alone and with both) give the losses, the gradient norms and the weights of the plain
/// step with materialised attention: CLO, DPO and SFT; every parameter training (the
/// tied output layer and the embeddings included), attention only, and LoRA; chunks of 1
/// and 3 positions (not dividing the width); two micro-batches.
#[test]
fn memory_savers_change_nothing_but_memory() {
    let dpo_batch = MicroBatch {
        english: vec![true, false, true, false],
        ..clo_batch()
    };
    let cases = [
        (clo(), clo_batch()),
        (
            Objective::Dpo {
                beta: 0.1,
                dpop: 0.0,
            },
            dpo_batch,
        ),
        (
            Objective::Sft {
                reduction: NllReduction::TokenMean,
            },
            clo_batch(),
        ),
    ];
    let sets = [
        crate::train::trainable::Trainable::Full,
        crate::train::trainable::Trainable::Attention { layers: None },
        crate::train::trainable::Trainable::Lora {
            rank: 2,
            alpha: 4.0,
            targets: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        },
    ];
    for (objective, batch) in &cases {
        for set in &sets {
            // One initial model for every run: tests drawing random weights elsewhere (a
            // pretraining, a session) may advance the shared device RNG between two draws.
            let device = Device::flex().autodiff();
            // Two layers: the gradient must pass from one recomputed layer to the next.
            let config = crate::train::pretrain::tiny_test_decoder_of(2);
            let init = crate::seeded(&device, 7, || set.apply(config.init(&device)).unwrap());
            let run = |(chunk, layered, attention): (usize, bool, AttentionKind)| {
                let mut model = init.clone().with_attention(attention);
                let mut t = Trainer::new(*objective, OptimizerSettings::fine_tuning(0.0, 1.0))
                    .with_logp_chunk(chunk)
                    .with_grad_checkpoint(layered);
                let mut out = Vec::new();
                for _ in 0..2 {
                    let two = [batch.clone(), batch.clone()];
                    let (next, r) = t.step(model, &two, 1e-2).unwrap();
                    out.push((r.loss, r.grad_norm));
                    model = next;
                }
                (out, all_weights(&model))
            };
            use AttentionKind::{Materialized, MemoryEfficient};
            let (plain, wp) = run((0, false, Materialized));
            for chunk in [
                (1, false, Materialized),
                (3, false, Materialized),
                (0, true, Materialized),
                (3, true, Materialized),
                (0, false, MemoryEfficient),
                (3, true, MemoryEfficient),
            ] {
                let (chunked, wc) = run(chunk);
                for ((la, ga), (lb, gb)) in plain.iter().zip(&chunked) {
                    assert!(
                        (la - lb).abs() < 1e-5,
                        "{objective:?} {set:?} {chunk:?}: loss {la} vs {lb}"
                    );
                    assert!(
                        (ga - gb).abs() < 1e-5 * ga.max(1.0),
                        "{objective:?} {set:?} {chunk:?}: grad norm {ga} vs {gb}"
                    );
                }
                let worst = wp
                    .iter()
                    .zip(&wc)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-5,
                    "{objective:?} {set:?} {chunk:?}: weights differ by {worst}"
                );
            }
            assert!(plain[0].1 > 0.0, "{objective:?} {set:?}: a gradient");
        }
    }
}

/// Validation reads one number: the example-weighted mean of the batches' losses.
#[test]
fn evaluate_weights_batches_by_examples() {
    let sft = Objective::Sft {
        reduction: NllReduction::SequenceMean,
    };
    let rows: Vec<Pair> = (0..3).map(|r| pair(r + 5, 2)).collect();
    let model = tiny().valid();
    let t = Trainer::new(sft, OptimizerSettings::fine_tuning(0.0, 1.0));
    let one = |rows: &[Pair]| {
        t.evaluate(
            &model,
            &[MicroBatch {
                rows: rows.to_vec(),
                ..Default::default()
            }],
        )
        .unwrap()
    };
    let split = t
        .evaluate(
            &model,
            &[
                MicroBatch {
                    rows: rows[..1].to_vec(),
                    ..Default::default()
                },
                MicroBatch {
                    rows: rows[1..].to_vec(),
                    ..Default::default()
                },
            ],
        )
        .unwrap();
    assert!((one(&rows) - split).abs() < 1e-5);
    assert!((split - (one(&rows[..1]) + 2.0 * one(&rows[1..])) / 3.0).abs() < 1e-5);
}

/// The read-back is laid out once (`readback::Logged`): each shard's numbers in a fixed order
/// and width, then the squared gradient norm. Unpacking adds shards' shares per micro-batch,
/// gives each pair its direction, and takes a read-back of another length for an internal fault
/// instead of reading past it.
#[test]
fn the_read_back_unpacks_by_its_layout() {
    use super::readback::{Logged, unpack};
    let layout = vec![
        Logged::Clo { micro: 0, pairs: 2 },
        Logged::Dpo {
            micro: 1,
            english: vec![true, false],
        },
        Logged::Sft { micro: 1 },
    ];
    assert_eq!(
        layout.iter().map(Logged::width).collect::<Vec<_>>(),
        [11, 5, 1]
    );
    let values: Vec<f32> = (0..18).map(|i| i as f32).collect();
    let u = unpack(&layout, &values).unwrap();
    assert_eq!(u.losses, [0.0, 11.0 + 16.0]);
    assert_eq!(u.sft, [1.0, 16.0]);
    assert_eq!(u.cl, [2.0, 11.0]);
    assert_eq!(
        u.pairs,
        [
            (true, 3.0, 5.0),
            (true, 4.0, 6.0),
            (false, 7.0, 9.0),
            (false, 8.0, 10.0),
            (true, 12.0, 14.0),
            (false, 13.0, 15.0),
        ]
    );
    assert_eq!(u.grad_norm, 17f64.sqrt());
    for bad in [&values[..17], &[values.clone(), vec![0.0]].concat()[..]] {
        assert!(matches!(unpack(&layout, bad), Err(CoreError::Internal(_))));
    }
}
