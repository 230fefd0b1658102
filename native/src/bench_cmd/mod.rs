//! `clo bench train|generate`: times a training step or greedy generation on a model of a real
//! shape (random weights) or a model directory, and with `--compare-torch PYTHON` runs the same
//! work in PyTorch eager in the same invocation (`native/bench/torch_bench.py`, shipped inside
//! the binary) and prints the ratios.
//!
//! Nothing here is a test: the numbers are printed (and written with `--json`), never asserted.

mod generate;
mod report;
mod train;

use clo_core::load::models::Precision;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::prelude::*;
use clap::{Args, Subcommand};
use clo_core::Pretrained;
use clo_core::bench::{MatmulParams, Shape, TrainWork, generation_prompts};
use clo_core::generate::{SamplingConfig, generate_batch};
use clo_core::models::{CausalLm, ModelConfig};
use clo_core::score::{batch_logps, collate};
use clo_core::train::{Method, OptimizerSettings, RunConfig, TrainableKind, Trainer};
use serde::Serialize;
use serde_json::{Value, json};

use crate::device::{DEVICE_HELP, adapters, parse_device, parse_devices};

use generate::bench_generate;
use report::{Report, finish};
use train::bench_train;

/// The PyTorch side, compiled in so that `--compare-torch` works from any directory.
const TORCH_SCRIPT: &str = include_str!("../../bench/torch_bench.py");

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Time optimizer steps (forward, loss, backward, clipping, AdamW) of a method on one
    /// batch, the reference log-probs precomputed as `clo train` does.
    Train(TrainBenchArgs),
    /// Time greedy generation with the KV cache (every row generates --new-tokens tokens).
    Generate(GenerateBenchArgs),
}

/// What both benchmarks take.
#[derive(Args, Debug)]
pub struct Common {
    /// A model directory or GGUF file to benchmark (its weights). Default: --shape.
    #[arg(long, conflicts_with = "shape")]
    model: Option<PathBuf>,
    /// A real model's shape with random weights (nothing is downloaded): tiny, smollm2-135m,
    /// qwen2.5-0.5b, llama-3.2-1b, llama-3-8b.
    #[arg(long)]
    shape: Option<String>,
    /// Storage of the weights that do not train, as `clo train --dtype`: f32, f16, bf16 or
    /// auto. PyTorch's side stays f32.
    #[arg(long, default_value = "f32", value_name = "DTYPE")]
    dtype: Precision,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Untimed repetitions first (kernel autotuning, allocator warm-up).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also run the same work in PyTorch eager with this Python (needs torch and
    /// transformers; on CUDA when clo runs on a GPU and torch sees one, else on the CPU with
    /// as many threads as clo) and print clo/PyTorch ratios.
    #[arg(long, value_name = "PYTHON")]
    compare_torch: Option<PathBuf>,
    /// Peak FLOP/s of the device in TFLOP/s, for MFU. Default: estimated for CPUs (cores x
    /// clock x SIMD FMA width), looked up for a few GPUs.
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Seed of the weights and token ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
pub struct TrainBenchArgs {
    #[command(flatten)]
    common: Common,
    /// Examples per step: quadruples (clo, 4 rows each), preference pairs (dpo, 2 rows) or
    /// supervised pairs (sft, sft-eng, sft-tgt).
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    /// Tokens per row (prompt half, response half).
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// clo, dpo, sft, sft-eng or sft-tgt.
    #[arg(long, default_value = "clo")]
    method: String,
    /// attention (q/k/v/o projections), lora (on the attention projections) or full.
    #[arg(long, default_value = "attention")]
    trainable: String,
    #[arg(long, default_value_t = 1e-5)]
    lr: f64,
    /// Data parallelism, as `clo train --devices` (e.g. wgpu:0,wgpu:1): the step is timed on
    /// the first 1, 2, .., N devices of the list, with each device's peak memory and the scaling
    /// efficiency (tokens/s on k devices / (k x tokens/s on one)). Overrides --device.
    #[arg(long, value_name = "LIST")]
    devices: Option<String>,
    /// Per-layer activation checkpointing, as `clo train --grad-checkpoint`.
    #[arg(long)]
    grad_checkpoint: bool,
    /// Log-probs this many positions at a time, as `clo train --logp-chunk` (0: all at once).
    #[arg(long, default_value_t = 0)]
    logp_chunk: usize,
    /// How attention is computed, as `clo train --attention`: memory-efficient (the default) or
    /// materialized.
    #[arg(long, value_name = "KIND", default_value_t = clo_core::load::models::AttentionKind::MemoryEfficient)]
    attention: clo_core::load::models::AttentionKind,
    /// Print the memory model's prediction of this step's peak memory, term by term, and stop:
    /// no model is built, so a shape larger than this machine can be sized (every run prints
    /// the prediction beside the measured peak).
    #[arg(long)]
    predict_memory: bool,
}

#[derive(Args, Debug)]
pub struct GenerateBenchArgs {
    #[command(flatten)]
    common: Common,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// Prompt tokens per row.
    #[arg(long, default_value_t = 32)]
    seq_len: usize,
    /// Tokens generated per row (EOS does not stop it).
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
}

pub fn run_bench(cmd: BenchCommand) -> anyhow::Result<()> {
    let report = match cmd {
        BenchCommand::Train(args) => bench_train(&args)?,
        BenchCommand::Generate(args) => bench_generate(&args)?,
    };
    if report.json {
        println!("{}", serde_json::to_string_pretty(&report.value)?);
    } else {
        print!("{}", report.text);
    }
    Ok(())
}

struct Printed {
    json: bool,
    value: Value,
    text: String,
}

/// One side's measurements.
#[derive(Debug, Clone, Serialize)]
struct Side {
    /// Every repetition's seconds, warm-up first.
    step_seconds: Vec<f64>,
    /// Median of the timed repetitions.
    median_step_s: f64,
    /// Tokens per second at the median: the step's prompt and response tokens (train), or
    /// the generated tokens (generate).
    tokens_per_s: f64,
    peak_memory_bytes: Option<u64>,
    memory_kind: String,
    /// Model FLOPs utilization at the median, against `peak_flops`.
    mfu: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    losses: Vec<f64>,
    device_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    versions: Option<String>,
}

impl Side {
    fn new(
        step_seconds: Vec<f64>,
        warmup: usize,
        tokens: usize,
        flops: f64,
        peak: Option<f64>,
    ) -> Self {
        let mut timed: Vec<f64> = step_seconds.iter().skip(warmup).copied().collect();
        timed.sort_by(f64::total_cmp);
        let median = if timed.is_empty() {
            f64::NAN
        } else if timed.len() % 2 == 1 {
            timed[timed.len() / 2]
        } else {
            (timed[timed.len() / 2 - 1] + timed[timed.len() / 2]) / 2.0
        };
        Self {
            step_seconds,
            median_step_s: median,
            tokens_per_s: tokens as f64 / median,
            peak_memory_bytes: None,
            memory_kind: String::new(),
            mfu: peak.map(|p| flops / median / p),
            losses: Vec::new(),
            device_name: String::new(),
            versions: None,
        }
    }
}

/// The model under test: its config (for FLOPs and for PyTorch) and where it came from.
struct Subject {
    config: ModelConfig,
    /// config.json as PyTorch gets it (shapes), or None for a model directory.
    hf_config: Option<Value>,
    model_dir: Option<PathBuf>,
    label: String,
}

fn subject(common: &Common) -> anyhow::Result<Subject> {
    if common.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if let Some(dir) = &common.model {
        let config = ModelConfig::of_model(dir)?;
        return Ok(Subject {
            config,
            hf_config: None,
            model_dir: Some(std::path::absolute(dir)?),
            label: dir.display().to_string(),
        });
    }
    let shape: Shape = common.shape.as_deref().unwrap_or("smollm2-135m").parse()?;
    Ok(Subject {
        config: shape.config(),
        hf_config: Some(shape.hf_config()),
        model_dir: None,
        label: format!("{} (random weights)", shape.name()),
    })
}

/// Builds the model on `device`: the checkpoint's weights, or random ones from `seed`.
fn build_model(subject: &Subject, device: &Device, seed: u64) -> anyhow::Result<CausalLm> {
    device.seed(seed);
    Ok(match &subject.model_dir {
        Some(dir) => Pretrained::load(dir, device)?.model,
        None => subject.config.decoder.init_random(device, 0.02),
    })
}

/// What the machine is, for the report.
#[derive(Debug, Clone, Serialize)]
struct Machine {
    cpu: String,
    logical_cpus: usize,
    os: String,
    /// The wgpu adapter, when the device is wgpu.
    adapter: Option<String>,
    /// Whether the wgpu adapter is a software (CPU) one such as lavapipe.
    software_adapter: bool,
}

fn machine(device_spec: &str) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let (adapter, software) = if device_spec.starts_with("wgpu") {
        let list = adapters();
        let pick = if device_spec == "wgpu:cpu" {
            list.iter().find(|a| a.device_type == wgpu::DeviceType::Cpu)
        } else {
            list.iter()
                .find(|a| a.device_type == wgpu::DeviceType::DiscreteGpu)
                .or_else(|| list.first())
        };
        (
            pick.map(|a| format!("{} ({:?})", a.name, a.backend)),
            pick.is_some_and(|a| a.device_type == wgpu::DeviceType::Cpu),
        )
    } else {
        (None, false)
    };
    Machine {
        cpu,
        logical_cpus: threads(),
        os: std::env::consts::OS.to_string(),
        adapter,
        software_adapter: software,
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Peak f32 FLOP/s of the device and how it was found.
fn peak_flops(common: &Common, machine: &Machine) -> (Option<f64>, String) {
    if let Some(t) = common.peak_tflops {
        return (Some(t * 1e12), "--peak-tflops".into());
    }
    if let Some(adapter) = machine
        .adapter
        .as_ref()
        .filter(|_| !machine.software_adapter)
    {
        // Dense f32 (non-tensor-core) peaks from the vendors' data sheets.
        const KNOWN: [(&str, f64); 6] = [
            ("H200", 67e12),
            ("H100", 67e12),
            ("A100", 19.5e12),
            ("L40S", 91.6e12),
            ("RTX 4090", 82.6e12),
            ("MI300X", 163.4e12),
        ];
        return match KNOWN.iter().find(|(name, _)| adapter.contains(name)) {
            Some((name, p)) => (Some(*p), format!("{name} f32 data sheet")),
            None => (None, format!("unknown for {adapter}; pass --peak-tflops")),
        };
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    // f32 FLOPs per cycle per core: two FMA units of the widest vector.
    let (per_cycle, isa) = if has("avx512f") {
        (64.0, "AVX-512")
    } else if has("avx2") && has("fma") {
        (32.0, "AVX2+FMA")
    } else if std::env::consts::ARCH == "aarch64" {
        (16.0, "NEON")
    } else {
        (8.0, "SSE")
    };
    let khz = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok());
    let mhz = khz.map(|k| k / 1000.0).or_else(|| {
        cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("cpu MHz"))
            .and_then(|l| l.trim_start_matches([' ', '\t', ':']).parse::<f64>().ok())
    });
    match mhz {
        Some(mhz) => {
            let cores = machine.logical_cpus as f64;
            (
                Some(cores * mhz * 1e6 * per_cycle),
                format!(
                    "estimated: {} logical CPUs x {:.2} GHz x {per_cycle} f32 FLOPs/cycle ({isa})",
                    machine.logical_cpus,
                    mhz / 1000.0
                ),
            )
        }
        None => (None, "unknown CPU clock; pass --peak-tflops".into()),
    }
}

/// Records the device allocator's reserved bytes (wgpu); the maximum over the run is reported.
struct MemoryWatch {
    device: Device,
    is_cpu: bool,
    max_reserved: u64,
}

impl MemoryWatch {
    fn new(device: &Device, spec: &str) -> Self {
        Self {
            device: device.clone(),
            is_cpu: !spec.starts_with("wgpu"),
            max_reserved: 0,
        }
    }

    fn sample(&mut self) {
        if let Some(usage) = self.device.memory_pool_usage() {
            self.max_reserved = self.max_reserved.max(usage.bytes_reserved);
        }
    }

    fn finish(&self, side: &mut Side) {
        if self.is_cpu {
            side.peak_memory_bytes = clo_core::train::memory::process_peak_rss();
            side.memory_kind = "peak RSS".into();
        } else {
            side.peak_memory_bytes = Some(self.max_reserved);
            side.memory_kind = "device pool reserved (max after each step)".into();
        }
    }
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn torch_side(
    out: &Value,
    warmup: usize,
    tokens: usize,
    flops: f64,
    peak: Option<f64>,
) -> anyhow::Result<Side> {
    let times = f64s(&out["step_seconds"]);
    if times.len() <= warmup {
        bail!("the PyTorch script reported {} step times", times.len());
    }
    let mut side = Side::new(times, warmup, tokens, flops, peak);
    side.peak_memory_bytes = out["peak_memory_bytes"].as_u64();
    side.memory_kind = out["memory_kind"].as_str().unwrap_or_default().into();
    side.device_name = format!(
        "{} ({} threads)",
        out["device_name"].as_str().unwrap_or("?"),
        out["threads"]
    );
    side.versions = Some(format!(
        "torch {}, transformers {}",
        out["torch"].as_str().unwrap_or("?"),
        out["transformers"].as_str().unwrap_or("?")
    ));
    Ok(side)
}

/// Runs the shipped PyTorch script on `spec` (plus the run's common settings) and returns its
/// output.
fn run_torch(
    python: &Path,
    mut spec: Value,
    common: &Common,
    machine: &Machine,
) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir().context("a temporary directory for the PyTorch script")?;
    let script = dir.path().join("torch_bench.py");
    std::fs::write(&script, TORCH_SCRIPT)?;
    let on_gpu = common.device.starts_with("wgpu") && !machine.software_adapter;
    spec["device"] = json!(if on_gpu { "gpu" } else { "cpu" });
    spec["threads"] = json!(threads());
    spec["seed"] = json!(common.seed);
    spec["steps"] = json!(common.steps);
    spec["warmup"] = json!(common.warmup);
    let spec_path = dir.path().join("spec.json");
    let out_path = dir.path().join("out.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let status = std::process::Command::new(python)
        .arg(&script)
        .arg(&spec_path)
        .arg(&out_path)
        .status()
        .with_context(|| format!("--compare-torch: could not start {}", python.display()))?;
    if !status.success() {
        bail!(
            "--compare-torch: `{} torch_bench.py` failed ({status}); it needs torch and transformers (pip install torch transformers), and peft for --trainable lora",
            python.display()
        );
    }
    let text = std::fs::read_to_string(&out_path)?;
    serde_json::from_str(&text).context("the PyTorch script's output")
}
