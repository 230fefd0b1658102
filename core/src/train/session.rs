//! A training run driven step by step from outside, with no run directory: what the browser
//! trains with (burn-train has no wasm support, and a blocking GPU read panics there, so the
//! reference pass and every step read back with awaited reads). It takes the same data order,
//! objective, trainer step and `metrics.jsonl` lines as `clo train` with the same settings, so
//! its step 0 is `clo train`'s step 0.

use burn::prelude::*;

use super::batch::tokenize_quads;
use super::batcher::{Batcher, split};
use super::config::{Method, RunConfig};
use super::data::Quadruple;
use super::optim::Schedule;
use super::reference::{no_values, reference_logps_async};
use super::run::StepMetrics;
use super::step::Trainer;
use crate::error::{CoreError, Result};
use crate::load::models::CausalLm;
use crate::load::tokenizer::ChatTokenizer;

/// A single-stage training (clo, dpo, sft, sft-eng, sft-tgt) stepped by the caller.
pub struct Session {
    model: CausalLm,
    trainer: Trainer,
    batcher: Batcher,
    /// The frozen reference (the starting model, plain) while the method needs one.
    reference: Option<CausalLm>,
    /// Reference log-probs, computed for each example when a step first uses it (a browser
    /// does not wait for the whole data set's pass before step 0).
    refs: Vec<Vec<f32>>,
    have_ref: Vec<bool>,
    stage: Method,
    schedule: Schedule,
    total: usize,
    step: usize,
}

impl Session {
    /// Prepares a training of `base` (a plain model on `device`) on `quads`: tokenizes and splits
    /// them as `clo train` does, puts the model under autodiff, applies the trainable set, and
    /// keeps the starting model as the reference, whose log-probs each step computes for the
    /// examples it uses first. `config.model` and `config.data` only name things in messages.
    pub async fn new(
        base: &CausalLm,
        tokenizer: &ChatTokenizer,
        quads: &[Quadruple],
        config: RunConfig,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let stages = config.method.stages();
        let [stage] = stages.as_slice() else {
            return Err(CoreError::Invalid(format!(
                "method {}: a session trains one stage; run the stages one after the other",
                config.method.name()
            )));
        };
        let stage = *stage;
        if quads.is_empty() {
            return Err(CoreError::Invalid("no quadruples to train on".into()));
        }
        let (tokenized, dropped) = tokenize_quads(tokenizer, quads, config.max_len)?;
        let data = split(tokenized, dropped, &config)?;
        let batcher = Batcher::new(stage, &data.train, &config, 0);
        device.seed(config.seed);
        let ad = config.autodiff_device(device);
        ad.seed(config.seed);
        // `train()` puts the (plain) weights under autodiff, on the same device.
        let model = config.trainable_model(base.clone().train(), &ad)?;
        let reference = stage.needs_reference().then(|| model.valid());
        let refs = if stage.needs_reference() {
            no_values(&batcher)
        } else {
            Vec::new()
        };
        let have_ref = vec![false; refs.len()];
        let (total, schedule) = batcher.schedule(&config);
        let trainer = Trainer::for_stage(stage, &config);
        Ok(Self {
            model,
            trainer,
            batcher,
            reference,
            refs,
            have_ref,
            stage,
            schedule,
            total,
            step: 0,
        })
    }

    /// Steps of the whole training.
    pub fn total_steps(&self) -> usize {
        self.total
    }

    /// Steps done.
    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// The model as trained so far (on the autodiff device; `valid()` for inference).
    pub fn model(&self) -> &CausalLm {
        &self.model
    }

    /// One optimizer step, awaited; its `metrics.jsonl` line (losses and rewards of the batch
    /// before the update, as `clo train` logs them); `None` once every step is done. There is
    /// no clock here (wasm has none in `std`): `tokens_per_s` is 0 for the caller, who timed
    /// the step, to set.
    pub async fn step(&mut self) -> Result<Option<StepMetrics>> {
        if self.step >= self.total {
            return Ok(None);
        }
        if let Some(reference) = &self.reference {
            let missing: Vec<usize> = self
                .batcher
                .step_examples(self.step)
                .into_iter()
                .filter(|i| !self.have_ref[*i])
                .collect();
            reference_logps_async(reference, &self.batcher, &missing, &mut self.refs).await?;
            for i in missing {
                self.have_ref[i] = true;
            }
        }
        let (epoch, batches) = self.batcher.step(self.step, &self.refs);
        let lr = self.schedule.lr_at(self.step);
        let (model, report) = self
            .trainer
            .step_async(self.model.clone(), &batches, lr)
            .await?;
        if let Some(what) = report.non_finite() {
            return Err(CoreError::Invalid(format!(
                "step {}: the {what} is not finite; the update was not applied (lower the learning rate)",
                self.step
            )));
        }
        self.model = model;
        let line = StepMetrics {
            tokens_per_s: 0.0,
            ..StepMetrics::of_step(self.step, self.stage.name(), epoch, &report, lr, 1.0)
        };
        self.step += 1;
        Ok(Some(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pretrained;

    use crate::ready;

    /// The session's losses are `clo train`'s, step for step, with the same settings.
    #[test]
    fn a_session_trains_as_clo_train() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let dir = tempfile::tempdir().unwrap();
        let config = RunConfig {
            model: root.join("models/qwen2"),
            data: root.join("data/quads.jsonl"),
            steps: Some(3),
            batch_size: 3,
            lr: 1e-3,
            val_fraction: 0.0,
            ..RunConfig::default()
        };
        let opts =
            crate::train::TrainOptions::new(dir.path().join("run"), dir.path().join("cache"));
        let device = Device::flex();
        crate::train::train(&config, &opts, &device, &mut |_| {}).unwrap();
        let native: Vec<f64> = std::fs::read_to_string(dir.path().join("run/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<StepMetrics>(l).unwrap().loss)
            .collect();

        let lm = Pretrained::load(&config.model, &device).unwrap();
        let quads = crate::train::data::read_quadruples(&config.data).unwrap();
        let mut session = ready(Session::new(
            &lm.model,
            &lm.tokenizer,
            &quads,
            config,
            &device,
        ))
        .unwrap();
        assert_eq!(session.total_steps(), 3);
        let mut losses = Vec::new();
        while let Some(line) = ready(session.step()).unwrap() {
            assert_eq!(line.step, losses.len());
            losses.push(line.loss);
        }
        assert_eq!(losses.len(), 3);
        for (a, b) in native.iter().zip(&losses) {
            assert!((a - b).abs() < 1e-5, "{native:?} vs {losses:?}");
        }
    }
}
