//! The decoder: shapes, caches, attention kinds and masks.
use super::*;

fn lens(tables: &RopeTables) -> Vec<(bool, usize)> {
    let t = tables.0.lock().unwrap();
    t.iter().map(|t| (t.autodiff, t.len)).collect()
}

/// The LoRA projection on the activations, `x W + s (x a) b`, gives the output and the
/// gradients (of x, the base weight, the bias and both factors) of Burn's composed weight
/// `x (W + s a b)`, which `Linear::forward` uses.
#[test]
fn lora_projection_equals_the_composed_weight() {
    use burn::module::{Lora, ModuleMapper};
    use burn::tensor::Distribution;
    struct Randomize;
    impl ModuleMapper for Randomize {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            p.map(|t| {
                Tensor::random(t.shape(), Distribution::Normal(0.0, 1.0), &t.device())
                    .require_grad()
            })
        }
    }
    let device = Device::flex().autodiff();
    let layer = crate::seeded(&device, 7, || {
        let layer: Linear = LinearConfig::new(6, 5).init(&device);
        layer.apply_lora(Lora::new(2, 3.0)).map(&mut Randomize)
    });
    let lora = layer.weight.adapter().expect("an adapter");
    let x = Tensor::<3>::random([2, 3, 6], Distribution::Normal(0.0, 1.0), &device).require_grad();
    let c = Tensor::<3>::random([2, 3, 5], Distribution::Normal(0.0, 1.0), &device);
    let values = |t: Tensor<3>| -> Vec<f32> { t.into_data().try_into_vec_as().unwrap() };
    let run = |y: Tensor<3>| {
        let grads = (y.clone() * c.clone()).sum().backward();
        let g = |t: Option<Tensor<2>>| -> Vec<f32> {
            t.expect("a gradient")
                .into_data()
                .try_into_vec_as()
                .unwrap()
        };
        let mut out = vec![values(y.detach())];
        out.push(values(x.grad(&grads).expect("x has a gradient")));
        out.push(g(layer.weight.base().grad(&grads)));
        out.push(
            layer
                .bias
                .as_ref()
                .unwrap()
                .val()
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_into_vec_as()
                .unwrap(),
        );
        out.push(g(lora.a.val().grad(&grads)));
        out.push(g(lora.b.val().grad(&grads)));
        out
    };
    let ours = run(project(&layer, x.clone()));
    let composed = run(layer.forward(x.clone()));
    for (what, (a, b)) in ["output", "x", "W", "bias", "a", "b"]
        .iter()
        .zip(ours.iter().zip(&composed))
    {
        assert_eq!(a.len(), b.len(), "{what}");
        let d = a
            .iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{what}: {d}");
        assert!(
            a.iter().any(|v| v.abs() > 1e-3),
            "{what} is not trivially zero"
        );
    }
}

/// RoPE tables are computed once per device and grown only when a longer position is
/// needed; a training model and its `valid()` twin keep their own.
#[test]
fn rope_tables_are_computed_once_per_device() {
    let device = Device::flex().autodiff();
    let model = crate::train::pretrain::tiny_test_decoder().init(&device);
    let ids =
        |n: usize| Tensor::<2, Int>::from_data(TensorData::new(vec![1i64; n], [1, n]), &device);
    let first = model.forward(ids(5), None);
    let again = model.forward(ids(5), None);
    assert_eq!(lens(&model.rope_tables), [(true, 64)]);
    let (a, b): (Vec<f32>, Vec<f32>) = (
        first.into_data().convert::<f32>().try_into_vec().unwrap(),
        again.into_data().convert::<f32>().try_into_vec().unwrap(),
    );
    assert_eq!(a, b);
    let _ = model.forward(ids(100), None);
    assert_eq!(lens(&model.rope_tables), [(true, 128)]);
    let plain = model.valid();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64; 3], [1, 3]), &plain.device());
    let _ = plain.forward(ids, None);
    assert_eq!(lens(&model.rope_tables), [(true, 128), (false, 64)]);
}
