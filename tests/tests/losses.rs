//! Training losses against PyTorch. `tests/fixtures/losses.json` comes from
//! `tests/fixtures/make_loss_fixture.py`: policy qwen2, reference qwen2-bf16, three quadruples
//! in CLO's row layout, each row scored alone by transformers in float64 log-softmax, and the
//! losses written out with plain torch ops:
//!
//! ```python
//! def dpo(pc, pr, rc, rr, beta):
//!     cr, rj = beta * (pc - rc), beta * (pr - rr); z = cr - rj
//!     return (-F.logsigmoid(z)).mean()
//! loss_cl = dpo(en...) + dpo(tgt...)                       # eq. 10: added
//! loss_sft = -pi[tgt_chosen].sum() / ntok[tgt_chosen].sum()   # token_mean
//! loss = lam * loss_sft + (1 - lam) * loss_cl
//! ```

use burn::prelude::*;
use clo_core::Pretrained;
use clo_core::score::{batch_logps, collate};
use clo_core::train::batch::{TokenizedQuad, clo_rows, tokenize_quads};
use clo_core::train::data::Quadruple;
use clo_core::train::loss::{
    NllReduction, clo_loss, clo_positive_loss, dpo_loss, dpo_positive_loss, nll,
};
use clo_tests::{fixture_dir, loss_fixture};
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data().try_into_vec_as::<f32>().unwrap()[0] as f64
}

fn vec1(t: Tensor<1>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

fn t1(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

fn close(got: f64, want: f64, tol: f64, what: &str) {
    assert!((got - want).abs() <= tol, "{what}: {got} vs PyTorch {want}");
}

fn reduction(v: &Value) -> NllReduction {
    serde_json::from_value(v["nll_reduction"].clone()).unwrap()
}

/// The loss functions alone, fed PyTorch's log-probs.
#[test]
fn loss_functions_match_pytorch() {
    let device = Device::flex();
    let fx = loss_fixture();
    let pi = floats(&fx["policy_logps"]);
    let reference = floats(&fx["reference_logps"]);
    let n = pi.len() / 4;
    let ntok: Vec<f32> = fx["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["response_ids"].as_array().unwrap().len() as f32)
        .collect();

    // The third case is CLO with DPO-Positive terms (dpop 5), where some chosen responses
    // are less likely under the policy than under the reference and others are not.
    for case in fx["clo"].as_array().unwrap() {
        let terms = clo_positive_loss(
            t1(&pi, &device),
            t1(&reference, &device),
            t1(&ntok[2 * n..3 * n], &device),
            case["beta"].as_f64().unwrap(),
            case["lambda"].as_f64().unwrap(),
            reduction(case),
            case["dpop"].as_f64().unwrap(),
        );
        close(
            scalar(terms.loss),
            case["loss"].as_f64().unwrap(),
            1e-5,
            "clo loss",
        );
        close(
            scalar(terms.loss_sft),
            case["loss_sft"].as_f64().unwrap(),
            1e-5,
            "clo loss_sft",
        );
        close(
            scalar(terms.loss_cl),
            case["loss_cl"].as_f64().unwrap(),
            1e-5,
            "clo loss_cl",
        );
        // z and rewards are differences of log-probs near -180, which f32 holds to 1.5e-5
        // (one ulp): four of them times beta 0.5 can be 1.5e-5 off before any arithmetic.
        for (dir, terms) in [("en", &terms.en), ("tgt", &terms.tgt)] {
            for (got, want) in vec1(terms.z.clone()).iter().zip(floats(&case[dir]["z"])) {
                close(*got as f64, want as f64, 2e-5, &format!("z_{dir}"));
            }
            for (got, want) in vec1(terms.chosen_rewards.clone())
                .iter()
                .zip(floats(&case[dir]["chosen_rewards"]))
            {
                close(
                    *got as f64,
                    want as f64,
                    2e-5,
                    &format!("{dir} chosen reward"),
                );
            }
        }
    }

    // DPO on the 2N independent pairs: chosen = en chosen ++ tgt chosen, rejected likewise.
    let pick =
        |v: &[f32], a: usize, b: usize| [&v[a * n..(a + 1) * n], &v[b * n..(b + 1) * n]].concat();
    let dpo = dpo_loss(
        t1(&pick(&pi, 0, 2), &device),
        t1(&pick(&pi, 1, 3), &device),
        t1(&pick(&reference, 0, 2), &device),
        t1(&pick(&reference, 1, 3), &device),
        fx["dpo"]["beta"].as_f64().unwrap(),
    );
    close(
        scalar(dpo.loss),
        fx["dpo"]["loss"].as_f64().unwrap(),
        1e-5,
        "dpo loss",
    );
    let dpop = dpo_positive_loss(
        t1(&pick(&pi, 0, 2), &device),
        t1(&pick(&pi, 1, 3), &device),
        t1(&pick(&reference, 0, 2), &device),
        t1(&pick(&reference, 1, 3), &device),
        fx["dpo_dpop"]["beta"].as_f64().unwrap(),
        fx["dpo_dpop"]["dpop"].as_f64().unwrap(),
    );
    close(
        scalar(dpop.loss),
        fx["dpo_dpop"]["loss"].as_f64().unwrap(),
        1e-5,
        "dpo-positive loss",
    );
    for (got, want) in vec1(dpop.z).iter().zip(floats(&fx["dpo_dpop"]["z"])) {
        close(*got as f64, want as f64, 1e-4, "dpo-positive z");
    }

    for (key, blocks) in [
        ("sft", vec![0, 2]),
        ("sft_eng", vec![0]),
        ("sft_tgt", vec![2]),
    ] {
        let lp: Vec<f32> = blocks
            .iter()
            .flat_map(|&k| pi[k * n..(k + 1) * n].to_vec())
            .collect();
        let nt: Vec<f32> = blocks
            .iter()
            .flat_map(|&k| ntok[k * n..(k + 1) * n].to_vec())
            .collect();
        let got = scalar(nll(
            t1(&lp, &device),
            t1(&nt, &device),
            NllReduction::TokenMean,
        ));
        close(got, fx[key].as_f64().unwrap(), 1e-5, key);
    }
}

/// The whole path: quadruples -> tokens -> CLO rows -> padded batch -> log-probs -> loss.
#[test]
fn clo_loss_from_quadruples_matches_pytorch() {
    let device = Device::flex();
    let fx = loss_fixture();
    let policy = Pretrained::load(&fixture_dir("qwen2"), &device).unwrap();
    let reference = Pretrained::load(&fixture_dir("qwen2-bf16"), &device).unwrap();
    let quads: Vec<Quadruple> = serde_json::from_value(fx["quadruples"].clone()).unwrap();
    let max_len = fx["max_len"].as_u64().unwrap() as usize;

    let (tokenized, dropped) = tokenize_quads(&policy.tokenizer, &quads, max_len).unwrap();
    assert_eq!(dropped, 0);
    let refs: Vec<&TokenizedQuad> = tokenized.iter().collect();
    let rows = clo_rows(&refs, max_len);
    for (row, want) in rows.iter().zip(fx["rows"].as_array().unwrap()) {
        let ids = |k: &str| -> Vec<u32> { serde_json::from_value(want[k].clone()).unwrap() };
        assert_eq!(row.prompt, ids("prompt_ids"));
        assert_eq!(
            row.response,
            ids("response_ids"),
            "response cut to max_len like PyTorch"
        );
    }

    let batch = collate(&rows, &device);
    let (pi, _) = batch_logps(&policy.model, &batch);
    let (rf, _) = batch_logps(&reference.model, &batch);
    for (got, want) in vec1(pi.clone()).iter().zip(floats(&fx["policy_logps"])) {
        close(*got as f64, want as f64, 2e-4, "policy logp");
    }
    let n = quads.len();
    let ntok: Vec<f32> = batch.n_tokens[2 * n..3 * n]
        .iter()
        .map(|&t| t as f32)
        .collect();
    let case = &fx["clo"][0];
    let terms = clo_loss(
        pi,
        rf,
        t1(&ntok, &device),
        0.1,
        0.5,
        NllReduction::TokenMean,
    );
    close(
        scalar(terms.loss),
        case["loss"].as_f64().unwrap(),
        1e-5,
        "clo loss end to end",
    );
}
