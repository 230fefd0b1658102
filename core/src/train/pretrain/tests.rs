//! Pretraining: the tokenizer, a short run, resume and the written model.
use super::*;
use crate::Pretrained;

fn docs() -> Vec<Doc> {
    let mut out = Vec::new();
    for i in 0..40 {
        out.push(Doc::Chat {
            prompt: format!("What is {i} plus 1?"),
            response: format!("{i} plus 1 is {}.", i + 1),
        });
        out.push(Doc::Text {
            text: "The cat sits on the mat. The dog runs.".into(),
        });
    }
    out
}

#[test]
fn tokenizer_keeps_special_tokens_whole_and_round_trips() {
    let t = train_tokenizer(&docs(), 320).unwrap();
    assert!(t.get_vocab_size(true) <= 320);
    let enc = t
        .encode("<|user|>\nWhat is 3 plus 1?<|end|>", false)
        .unwrap();
    assert_eq!(enc.get_ids()[0], t.token_to_id(USER).unwrap());
    assert_eq!(*enc.get_ids().last().unwrap(), t.token_to_id(END).unwrap());
    let text = "The dog runs. Zebra!";
    let ids = t.encode(text, false).unwrap();
    assert_eq!(t.decode(ids.get_ids(), true).unwrap(), text);
    // Frequent words became single tokens.
    assert_eq!(t.encode(" plus", false).unwrap().get_ids().len(), 1);
}

/// A short pretraining on a tiny corpus: the loss falls, and the result loads as a model
/// directory whose chat template and EOS clo reads.
#[test]
fn short_pretraining_lowers_the_loss_and_writes_a_model_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m");
    let config = PretrainConfig {
        vocab_size: 320,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 2,
        num_kv_heads: 1,
        max_len: 32,
        steps: 40,
        batch_size: 16,
        warmup_steps: 5,
        save_every: 1000,
        ..Default::default()
    };
    let device = Device::flex();
    let summary = pretrain(
        &docs(),
        json!("test"),
        &config,
        PretrainTarget {
            out: &out,
            resume: false,
            extra: &[],
        },
        &device,
        &mut |_| {},
    )
    .unwrap();
    assert!(summary.last_loss < summary.first_loss * 0.7, "{summary:?}");
    assert!(!work_dir(&out).exists(), "the work directory is removed");
    let lm = Pretrained::load(&out, &device).unwrap();
    assert!(lm.tokenizer.has_chat_template());
    assert_eq!(lm.config.decoder.num_layers, 2);
    let prompt = lm.tokenizer.render_prompt("Hi").unwrap();
    assert_eq!(prompt, "<|user|>\nHi<|end|>\n<|assistant|>\n");
    let end = lm.tokenizer.encode(END, false).unwrap();
    assert_eq!(lm.tokenizer.eos_ids(), &end[..]);
}

fn losses(out: &Path) -> Vec<f64> {
    let s: PretrainSummary =
        serde_json::from_str(&std::fs::read_to_string(out.join("pretrain.json")).unwrap()).unwrap();
    s.loss_curve
}

/// A pretraining stopped after its step-10 checkpoint (here: a panic at step 14) resumes
/// from step 10 through the shared trainer and ends bit-identical to the uninterrupted one;
/// another config is refused.
#[test]
fn interrupted_pretraining_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = PretrainConfig {
        vocab_size: 320,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 1,
        num_heads: 2,
        num_kv_heads: 2,
        max_len: 32,
        steps: 20,
        batch_size: 8,
        warmup_steps: 2,
        save_every: 10,
        ..Default::default()
    };
    let device = Device::flex();
    let whole = dir.path().join("whole");
    pretrain(
        &docs(),
        json!("t"),
        &config,
        PretrainTarget {
            out: &whole,
            resume: false,
            extra: &[],
        },
        &device,
        &mut |_| {},
    )
    .unwrap();

    let cut = dir.path().join("cut");
    let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pretrain(
            &docs(),
            json!("t"),
            &config,
            PretrainTarget {
                out: &cut,
                resume: false,
                extra: &[],
            },
            &device,
            &mut |p| {
                if let PretrainProgress::Step(s) = p {
                    assert!(s.step < 14, "simulated crash");
                }
            },
        )
    }));
    assert!(crashed.is_err());
    assert!(!cut.exists() && work_dir(&cut).join("checkpoint/state.json").exists());

    let other = PretrainConfig {
        lr: 1e-2,
        ..config.clone()
    };
    let err = pretrain(
        &docs(),
        json!("t"),
        &other,
        PretrainTarget {
            out: &cut,
            resume: true,
            extra: &[],
        },
        &device,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("other settings"), "{err}");

    let mut first = None;
    pretrain(
        &docs(),
        json!("t"),
        &config,
        PretrainTarget {
            out: &cut,
            resume: true,
            extra: &[],
        },
        &device,
        &mut |p| {
            if let PretrainProgress::Started { step, .. } = p {
                first = Some(step);
            }
        },
    )
    .unwrap();
    assert_eq!(first, Some(10));
    // Bit-identical: the same losses and the same weights as the uninterrupted run.
    assert_eq!(losses(&whole), losses(&cut));
    let (a, b) = (
        std::fs::read(whole.join("model.safetensors")).unwrap(),
        std::fs::read(cut.join("model.safetensors")).unwrap(),
    );
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    assert_eq!(a.len(), b.len());
    for (name, t) in a.tensors() {
        let u = b.tensor(&name).unwrap();
        assert!(t.data() == u.data(), "{name}: the resumed weights differ");
    }
}
