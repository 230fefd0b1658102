//! Half-precision storage of the frozen weights (`--dtype`).
//!
//! The matrices that do not train (every linear weight and the embeddings in attention-only or
//! LoRA training, LoRA's frozen bases, everything at inference) are stored in f16 or bf16.
//! What trains keeps f32 (and so do its AdamW state and gradients), and so do norms and biases.
//! A product with a half-precision weight casts its input to the weight's type and its output
//! back to f32 (`project` in `transformer.rs`): the matrix product runs in the storage type,
//! accumulating in f32 where the backend does (Flex's gemm converts to f32 inside its kernel;
//! wgpu's matmul with shader-f16). Norms, softmax, log-probs, losses and reductions stay f32.

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::FloatDType;
use serde::{Deserialize, Serialize};

use super::transformer::CausalLm;
use crate::error::{CoreError, Result};

/// `--dtype`: how frozen weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 where the device offers it, else f16 where it does (wgpu with shader-f16), else
    /// f32. The CPU backend keeps f32: it computes half precision by converting to f32, so
    /// storage in half saves memory there but costs time; ask for it by name.
    Auto,
    /// Everything in f32 (the default).
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub const CHOICES: &'static str = "auto, f32, f16 or bf16";

    /// The storage type on `device`. A half type the device lacks is an error naming it.
    pub fn resolve(self, device: &Device) -> Result<FloatDType> {
        let half = match self {
            Precision::F32 => return Ok(FloatDType::F32),
            // Only a device with a memory pool (a GPU) gains from it; see `Auto`.
            Precision::Auto if device.memory_pool_usage().is_none() => {
                return Ok(FloatDType::F32);
            }
            Precision::Auto => {
                return Ok([FloatDType::BF16, FloatDType::F16]
                    .into_iter()
                    .find(|&d| device.supports_dtype(d))
                    .unwrap_or(FloatDType::F32));
            }
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        };
        if device.supports_dtype(half) {
            Ok(half)
        } else {
            Err(CoreError::Invalid(format!(
                "this device has no {self} (WGSL has f16 only with the shader-f16 feature, and never bf16); use f32 or auto"
            )))
        }
    }

    /// Bytes per stored frozen weight on `device`.
    pub fn bytes(self, device: &Device) -> Result<usize> {
        Ok(match self.resolve(device)? {
            FloatDType::F32 => 4,
            _ => 2,
        })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Precision::Auto),
            "f32" | "float32" => Ok(Precision::F32),
            "f16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(format!("unknown dtype `{other}`: {}", Self::CHOICES)),
        }
    }
}

/// Casts every frozen matrix (two or more dimensions, no gradient) to `dtype`.
struct StoreFrozen {
    dtype: FloatDType,
    cast: usize,
}

impl ModuleMapper for StoreFrozen {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // The tensor's own flag: false for every parameter of a model without autodiff.
        let tensor: &Tensor<D> = &param;
        if D < 2 || tensor.is_require_grad() {
            return param;
        }
        self.cast += 1;
        let dtype = self.dtype;
        param.map(|t| t.cast(dtype))
    }
}

impl CausalLm {
    /// This model with every frozen matrix stored in `dtype` (see the module's docs). Apply
    /// it after the trainable set: what trains then is kept in f32. f32 leaves it unchanged.
    pub fn store_frozen_in(self, dtype: FloatDType) -> Self {
        if dtype == FloatDType::F32 {
            return self;
        }
        let mut mapper = StoreFrozen { dtype, cast: 0 };
        let model = self.map(&mut mapper);
        tracing::debug!(
            ?dtype,
            matrices = mapper.cast,
            "frozen weights stored in half precision"
        );
        model
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::models::DecoderConfig;
    use crate::train::pretrain::tiny_test_decoder_of;
    use crate::train::trainable::Trainable;
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::DType;

    fn ids(device: &Device) -> Tensor<2, Int> {
        let v: Vec<i64> = (0..12).map(|i| (i * 37 % 300) as i64).collect();
        Tensor::from_data(TensorData::new(v, [2, 6]), device)
    }

    fn config() -> DecoderConfig {
        tiny_test_decoder_of(2)
    }

    /// The dtypes of the model's parameters: (matrices, vectors).
    fn dtypes(model: &CausalLm) -> (Vec<(DType, bool)>, Vec<DType>) {
        struct V(Vec<(DType, bool)>, Vec<DType>);
        impl ModuleVisitor for V {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                let t: &Tensor<D> = param;
                if D >= 2 {
                    self.0.push((t.dtype(), t.is_require_grad()));
                } else {
                    self.1.push(t.dtype());
                }
            }
        }
        let mut v = V(Vec::new(), Vec::new());
        model.visit(&mut v);
        (v.0, v.1)
    }

    /// Half-precision storage changes the logits by rounding only: f16 within 2e-2, bf16
    /// within 1e-1 of f32 (logits of magnitude ~1 on this model), and every matrix is stored
    /// in the type asked while norms stay f32.
    #[test]
    fn half_storage_keeps_the_logits() {
        let device = Device::flex();
        let model = crate::seeded(&device, 3, || config().init(&device));
        let reference = model
            .forward(ids(&device), None)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (dtype, tolerance) in [(FloatDType::F16, 2e-2), (FloatDType::BF16, 1e-1)] {
            let half = model.clone().store_frozen_in(dtype);
            let (matrices, vectors) = dtypes(&half);
            assert!(matrices.iter().all(|(d, _)| *d == DType::from(dtype)));
            assert!(vectors.iter().all(|d| *d == DType::F32));
            let logits = half.forward(ids(&device), None);
            assert_eq!(logits.dtype(), DType::F32);
            let logits = logits.into_data().try_to_vec::<f32>().unwrap();
            let worst = reference
                .iter()
                .zip(&logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < tolerance, "{dtype:?}: logits differ by {worst}");
            assert!(worst > 0.0, "{dtype:?}: nothing was rounded");
        }
    }

    /// In training, only what does not train is stored in half: attention-only keeps the
    /// attention projections f32, LoRA keeps its factors f32 (its bases are half). A step
    /// trains and keeps those types.
    #[test]
    fn half_storage_keeps_what_trains_in_f32() {
        use crate::infer::score::Pair;
        use crate::train::step::{MicroBatch, Objective, OptimizerSettings, Trainer};
        let device = Device::flex().autodiff();
        for set in [
            Trainable::Attention { layers: None },
            Trainable::Lora {
                rank: 2,
                alpha: 4.0,
                targets: vec!["q_proj".into(), "down_proj".into()],
            },
        ] {
            let model = crate::seeded(&device, 3, || set.apply(config().init(&device)).unwrap())
                .store_frozen_in(FloatDType::F16);
            let check = |model: &CausalLm| {
                let (matrices, _) = dtypes(model);
                for (d, trains) in &matrices {
                    let want = if *trains { DType::F32 } else { DType::F16 };
                    assert_eq!(*d, want, "{set:?}");
                }
                let trained = matrices.iter().filter(|(_, t)| *t).count();
                assert!(trained > 0 && trained < matrices.len(), "{set:?}");
            };
            check(&model);
            let before = model.valid().forward(ids(&device.clone().inner()), None);
            let mut trainer = Trainer::new(
                Objective::Sft {
                    reduction: crate::train::loss::NllReduction::TokenMean,
                },
                OptimizerSettings::fine_tuning(0.0, 1.0),
            );
            let batch = MicroBatch {
                rows: (0..4u32)
                    .map(|r| Pair {
                        prompt: vec![r + 1, 2 * r + 3],
                        response: (0..3).map(|t| (r * 13 + t * 5) % 300).collect(),
                    })
                    .collect(),
                reference: Vec::new(),
                english: Vec::new(),
            };
            let (model, report) = trainer.step(model, &[batch], 1e-2).unwrap();
            assert!(report.loss.is_finite() && report.grad_norm > 0.0, "{set:?}");
            check(&model);
            let after = model.valid().forward(ids(&device.clone().inner()), None);
            let moved = (before - after).abs().max().into_scalar::<f32>();
            assert!(moved > 0.0, "{set:?}: the step changed nothing");
        }
    }
}
