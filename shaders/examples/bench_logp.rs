//! `cargo run -p clo-shaders --example bench_logp` (the dev profile builds Burn optimized): forward and backward of the token log-probs, the fused
//! operation (`token_logps`) against the plain tensor-op reference, in the same run, on Flex
//! (CPU) and wgpu. Prints the median time of each and their ratio; nothing is asserted.
//!
//! `CLO_BENCH_SHAPE=ROWSxVOCAB` changes the shape (default 256x49152: a chunk of 256 positions
//! of SmolLM2's vocabulary); `CLO_BENCH_DEVICES=flex,wgpu` picks the devices.

use std::time::{Duration, Instant};

use burn::tensor::{Device, DeviceKind, Distribution, Int, Tensor};
use clo_shaders::{token_logps, token_logps_reference};

fn step(logits: &Tensor<2>, labels: &Tensor<1, Int>, fused: bool) -> Duration {
    let start = Instant::now();
    let x = logits.clone().require_grad();
    let logps = if fused {
        token_logps(x.clone(), labels.clone())
    } else {
        token_logps_reference(x.clone(), labels.clone())
    };
    let grads = logps.sum().backward();
    let grad = x.grad(&grads).expect("gradient");
    // Reading one number waits for the device to finish.
    let _: f32 = grad.sum().into_scalar();
    start.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let shape = std::env::var("CLO_BENCH_SHAPE").unwrap_or_else(|_| "256x49152".into());
    let (rows, vocab) = shape
        .split_once('x')
        .and_then(|(r, v)| Some((r.parse::<usize>().ok()?, v.parse::<usize>().ok()?)))
        .expect("CLO_BENCH_SHAPE is ROWSxVOCAB");
    let devices = std::env::var("CLO_BENCH_DEVICES").unwrap_or_else(|_| "flex,wgpu".into());
    println!("token log-probs, forward + backward, [{rows}, {vocab}] f32, median of 7");
    for name in devices.split(',') {
        let device = match name {
            "flex" => Device::flex(),
            "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
            other => panic!("unknown device {other}: flex or wgpu"),
        }
        .autodiff();
        let logits = Tensor::<2>::random([rows, vocab], Distribution::Normal(0.0, 4.0), &device);
        let labels =
            Tensor::<1, Int>::random([rows], Distribution::Uniform(0.0, vocab as f64), &device);
        let mut times = [Vec::new(), Vec::new()];
        for i in 0..8 {
            for (k, fused) in [false, true].into_iter().enumerate() {
                let t = step(&logits, &labels, fused);
                if i > 0 {
                    times[k].push(t); // the first round warms up (kernel compilation)
                }
            }
        }
        let [reference, fused] = times.map(median);
        println!(
            "{name:>5}: reference {:8.2} ms, fused {:8.2} ms: {:.2}x the reference's speed",
            reference.as_secs_f64() * 1e3,
            fused.as_secs_f64() * 1e3,
            reference.as_secs_f64() / fused.as_secs_f64()
        );
    }
}
