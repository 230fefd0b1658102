//! `cargo run -p clo-shaders --example bench_attention`: forward and backward of attention,
//! memory-efficient (`attention`) against the materialised reference (`attention_reference`),
//! in the same run, on Flex (CPU) and wgpu. Prints the median time of each, their ratio, and on
//! wgpu the device memory the forward leaves for the backward (Burn's memory statistics, bytes in
//! use after the forward minus before). Nothing is asserted.
//!
//! `CLO_BENCH_SHAPE=BATCHxHEADSxKV_HEADSxSEQxHEAD_DIM` changes the shape (default 4x14x2x256x64:
//! Qwen2.5-0.5B's heads on 4 rows of 256 tokens); `CLO_BENCH_DEVICES=flex,wgpu` picks the devices.

use std::time::{Duration, Instant};

use burn::tensor::{Bool, Device, DeviceKind, Distribution, Int, Tensor};
use clo_shaders::{attention, attention_reference};

/// Forward, then backward; the time of both and the bytes in use between them.
fn step(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    bias: &Tensor<3>,
    fused: bool,
) -> (Duration, Option<u64>) {
    let device = q.device();
    let in_use = || device.memory_pool_usage().map(|u| u.bytes_in_use);
    let _: f32 = q.clone().sum().into_scalar(); // the inputs exist before the clock starts
    let before = in_use();
    let start = Instant::now();
    let (q, k, v) = (
        q.clone().require_grad(),
        k.clone().require_grad(),
        v.clone().require_grad(),
    );
    let scale = (q.dims()[3] as f64).powf(-0.5);
    let f = if fused {
        attention
    } else {
        attention_reference
    };
    let out = f(q.clone(), k.clone(), v.clone(), bias.clone(), scale, 0.0);
    let loss = out.sum();
    let _: f32 = loss.clone().inner().into_scalar();
    let kept = match (before, in_use()) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let grads = loss.backward();
    let g = q.grad(&grads).expect("q's gradient").sum()
        + k.grad(&grads).expect("k's gradient").sum()
        + v.grad(&grads).expect("v's gradient").sum();
    let _: f32 = g.into_scalar(); // waits for the device
    (start.elapsed(), kept)
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let shape = std::env::var("CLO_BENCH_SHAPE").unwrap_or_else(|_| "4x14x2x256x64".into());
    let dims: Vec<usize> = shape
        .split('x')
        .map(|d| d.parse().expect("a number"))
        .collect();
    let [batch, heads, kv_heads, seq, head_dim] = dims[..] else {
        panic!("CLO_BENCH_SHAPE is BATCHxHEADSxKV_HEADSxSEQxHEAD_DIM")
    };
    let devices = std::env::var("CLO_BENCH_DEVICES").unwrap_or_else(|_| "flex,wgpu".into());
    println!(
        "causal attention, forward + backward, batch {batch}, {heads} heads on {kv_heads} kv heads, \
         seq {seq}, head_dim {head_dim}, f32, median of 3"
    );
    for name in devices.split(',') {
        let device = match name {
            "flex" => Device::flex(),
            "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
            other => panic!("unknown device {other}: flex or wgpu"),
        }
        .autodiff();
        let normal = Distribution::Normal(0.0, 1.0);
        let q = Tensor::<4>::random([batch, heads, seq, head_dim], normal, &device);
        let k = Tensor::<4>::random([batch, kv_heads, seq, head_dim], normal, &device);
        let v = Tensor::<4>::random([batch, kv_heads, seq, head_dim], normal, &device);
        let rows = Tensor::<1, Int>::arange(0..seq as i64, &device);
        let future: Tensor<2, Bool> = rows
            .clone()
            .reshape([1, seq])
            .greater(rows.reshape([seq, 1]));
        let bias = Tensor::<2>::zeros([seq, seq], &device)
            .mask_fill(future, f32::NEG_INFINITY)
            .reshape([1, seq, seq]);
        let mut times = [Vec::new(), Vec::new()];
        let mut kept = [None, None];
        for i in 0..4 {
            for (n, fused) in [false, true].into_iter().enumerate() {
                let (t, m) = step(&q, &k, &v, &bias, fused);
                if i > 0 {
                    times[n].push(t); // the first round warms up (kernel compilation)
                    kept[n] = m;
                }
            }
        }
        let [reference, fused] = times.map(median);
        let mib = |m: Option<u64>| match m {
            Some(b) => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
            None => "n/a".into(),
        };
        println!(
            "{name:>5}: materialised {:9.2} ms (kept {}), memory-efficient {:9.2} ms (kept {}): \
             {:.2}x the materialised speed",
            reference.as_secs_f64() * 1e3,
            mib(kept[0]),
            fused.as_secs_f64() * 1e3,
            mib(kept[1]),
            reference.as_secs_f64() / fused.as_secs_f64()
        );
    }
}
