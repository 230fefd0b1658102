//! Learning-rate schedule and global gradient-norm clipping (method.md section 6).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Linear warmup from 0, then cosine decay from `lr` to `min_lr` at `total_steps`, as
/// transformers' `get_cosine_with_min_lr_schedule_with_warmup`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl Schedule {
    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.min_lr + (self.lr - self.min_lr) * cosine
    }
}

/// Sums the squares of every gradient of a module's float parameters, on the device.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let square = grad.square().sum(); // [1]
            self.sum = Some(match self.sum.take() {
                Some(sum) => sum + square,
                None => square,
            });
        }
    }
}

/// Multiplies every gradient of a module's float parameters by `factor`.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, grad * self.factor);
        }
    }
}

/// The squared global L2 norm of `grads` over `module`'s float parameters, as a `[1]` tensor on
/// the device (`None` when no parameter has a gradient). Nothing is read back.
pub fn squared_grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut norm = SquaredNorm { grads, sum: None };
    module.visit(&mut norm);
    norm.sum
}

/// Scales the gradients so that their global norm `norm` (computed by the caller, e.g. from
/// [`squared_grad_norm`]) is at most `max_norm`, as PyTorch's `clip_grad_norm_` (which adds 1e-6
/// to the norm in the divisor). `max_norm <= 0` disables clipping.
pub fn clip_to<M: Module>(
    module: &M,
    mut grads: GradientsParams,
    norm: f64,
    max_norm: f64,
) -> GradientsParams {
    if max_norm > 0.0 && norm > max_norm {
        let mut scale = Scale {
            grads: &mut grads,
            factor: max_norm / (norm + 1e-6),
        };
        module.visit(&mut scale);
    }
    grads
}

/// Scales all gradients together so that their global L2 norm is at most `max_norm` (as
/// PyTorch's `clip_grad_norm_`); returns the norm before clipping. Reads one scalar back.
pub fn clip_global_norm<M: Module>(
    module: &M,
    grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, f64) {
    let total =
        squared_grad_norm(module, &grads).map_or(0.0, |s| (s.into_scalar::<f32>() as f64).sqrt());
    (clip_to(module, grads, total, max_norm), total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    #[test]
    fn schedule_warms_up_then_decays_to_min_lr() {
        let s = Schedule {
            lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert_eq!(s.lr_at(0), 0.0);
        assert!((s.lr_at(5) - 5e-4).abs() < 1e-12);
        assert!((s.lr_at(10) - 1e-3).abs() < 1e-12);
        // Halfway through the decay the cosine factor is 0.5.
        assert!((s.lr_at(60) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-12);
        assert!((s.lr_at(110) - 1e-5).abs() < 1e-12);
        assert!(
            (s.lr_at(500) - 1e-5).abs() < 1e-12,
            "stays at min_lr past the end"
        );
    }

    /// loss = sum(W * C) + sum(b * c) has gradients C and c, so the global norm is
    /// sqrt(|C|^2 + |c|^2) = sqrt(4 * 9 + 2 * 16) = sqrt(68) with C = 3, c = 4 everywhere.
    #[test]
    fn clipping_uses_the_global_norm() {
        let device = Device::flex().autodiff();
        let linear: Linear = LinearConfig::new(2, 2).init(&device);
        let w = linear.weight.val();
        let b = linear.bias.as_ref().unwrap().val();
        let loss = (w * 3.0).sum() + (b * 4.0).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &linear);
        let (grads, norm) = clip_global_norm(&linear, grads, 1.0);
        assert!((norm - 68f64.sqrt()).abs() < 1e-5, "{norm}");
        let gw: Vec<f32> = grads
            .get::<2>(linear.weight.id)
            .unwrap()
            .into_data()
            .try_into_vec_as()
            .unwrap();
        let gb: Vec<f32> = grads
            .get::<1>(linear.bias.as_ref().unwrap().id)
            .unwrap()
            .into_data()
            .try_into_vec_as()
            .unwrap();
        // Both scaled by the same factor 1 / sqrt(68): the direction is kept.
        let f = 1.0 / 68f64.sqrt();
        assert!(
            gw.iter().all(|g| (*g as f64 - 3.0 * f).abs() < 1e-5),
            "{gw:?}"
        );
        assert!(
            gb.iter().all(|g| (*g as f64 - 4.0 * f).abs() < 1e-5),
            "{gb:?}"
        );
        let (_, unclipped) = clip_global_norm(&linear, GradientsParams::new(), 1.0);
        assert_eq!(unclipped, 0.0);
    }
}
