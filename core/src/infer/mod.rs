//! Running a model: generation with a KV cache (`generate`) and log-probabilities of
//! responses (`score`).

pub mod generate;
pub mod score;

use std::ops::ControlFlow;

use crate::load::pretrained::Pretrained;
use generate::{Generation, SamplingConfig};
use score::{Pair, Score};

/// Running the model: what callers holding a loaded model use (its EOS ids and device come with
/// it). The free functions of [`crate::infer`] remain for a bare [`CausalLm`].
impl Pretrained {
    /// Continues `prompt` token by token ([`crate::infer::generate::generate`]).
    pub fn generate(
        &self,
        prompt: &[u32],
        config: &SamplingConfig,
        on_token: impl FnMut(u32),
    ) -> Generation {
        crate::infer::generate::generate(
            &self.model,
            prompt,
            self.tokenizer.eos_ids(),
            config,
            &self.device,
            on_token,
        )
    }

    /// [`Self::generate`], stopping early when `on_token` breaks.
    pub fn generate_until(
        &self,
        prompt: &[u32],
        config: &SamplingConfig,
        on_token: impl FnMut(u32) -> ControlFlow<()>,
    ) -> Generation {
        crate::infer::generate::generate_until(
            &self.model,
            prompt,
            self.tokenizer.eos_ids(),
            config,
            &self.device,
            on_token,
        )
    }

    /// Several prompts decoded together ([`crate::infer::generate::generate_batch`]).
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        configs: &[SamplingConfig],
        on_token: impl FnMut(usize, u32),
    ) -> Vec<Generation> {
        crate::infer::generate::generate_batch(
            &self.model,
            prompts,
            self.tokenizer.eos_ids(),
            configs,
            &self.device,
            on_token,
        )
    }

    /// Log-probabilities of responses given prompts, in one batch
    /// ([`crate::infer::score::score_batch`]).
    pub fn score(&self, pairs: &[Pair]) -> Vec<Score> {
        crate::infer::score::score_batch(&self.model, pairs, &self.device)
    }
}
