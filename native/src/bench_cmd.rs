//! `clo bench train|generate`: times a training step or greedy generation on a model of a real
//! shape (random weights) or a model directory, and with `--compare-torch PYTHON` runs the same
//! work in PyTorch eager in the same invocation (`native/bench/torch_bench.py`, shipped inside
//! the binary) and prints the ratios.
//!
//! Nothing here is a test: the numbers are printed (and written with `--json`), never asserted.

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

/// The PyTorch side, compiled in so that `--compare-torch` works from any directory.
const TORCH_SCRIPT: &str = include_str!("../bench/torch_bench.py");

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

fn bench_train(args: &TrainBenchArgs) -> anyhow::Result<Printed> {
    let common = &args.common;
    let subject = subject(common)?;
    let method: Method = args.method.parse()?;
    let trainable: TrainableKind = args.trainable.parse()?;
    let run_config = RunConfig {
        method,
        trainable,
        batch_size: args.batch_size,
        lr: args.lr,
        grad_checkpoint: args.grad_checkpoint,
        logp_chunk: args.logp_chunk,
        attention: args.attention,
        dtype: common.dtype,
        ..RunConfig::default()
    };
    let decoder = &subject.config.decoder;
    clo_core::limits::BATCH_SIZE.check_as("--batch-size", "clo bench train", args.batch_size)?;
    clo_core::limits::MAX_LEN.check_as("--seq-len", "clo bench train", args.seq_len)?;
    if args.seq_len > decoder.max_position_embeddings {
        bail!(
            "--seq-len {} exceeds the model's context of {} tokens",
            args.seq_len,
            decoder.max_position_embeddings
        );
    }
    let work = TrainWork::new(
        method,
        args.batch_size,
        args.seq_len,
        decoder.vocab_size,
        common.seed,
    )?;
    let objective = clo_core::train::run::objective(method, &run_config);
    let machine = machine(&common.device);
    let (peak, peak_source) = peak_flops(common, &machine);
    let row_lens: Vec<usize> = work
        .rows
        .iter()
        .map(|(p, r)| p.len() + r.len() - 1)
        .collect();
    let flops = MatmulParams::of(decoder).train_flops(&row_lens, trainable, run_config.lora_rank);
    let devices = match &args.devices {
        Some(list) => parse_devices(list)?,
        None => vec![parse_device(&common.device)?],
    };
    let stored_bytes = common.dtype.bytes(&devices[0])?;
    let predicted = clo_core::bench::train_memory(
        decoder,
        &clo_core::bench::StepShape {
            rows: work.rows.len(),
            seq: args.seq_len,
            trainable,
            lora_rank: run_config.lora_rank,
            stored_bytes,
            grad_checkpoint: args.grad_checkpoint,
            logp_chunk: args.logp_chunk,
            attention: args.attention,
        },
    );
    let gib = |b: f64| b / (1u64 << 30) as f64;
    let prediction = format!(
        "memory model: {:.2} GiB predicted (weights {:.2}, optimizer {:.2}, activations {:.2}, output layer {:.2}, process {:.2})",
        gib(predicted.total),
        gib(predicted.weights),
        gib(predicted.optimizer),
        gib(predicted.activations),
        gib(predicted.head),
        gib(predicted.process)
    );
    // What was asked: the report's first fields, with or without a run.
    let mut value = json!({
        "kind": "train",
        "model": subject.label,
        "method": method.name(),
        "trainable": args.trainable,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "rows": work.rows.len(),
        "grad_checkpoint": args.grad_checkpoint,
        "logp_chunk": args.logp_chunk,
        "attention": args.attention.to_string(),
        "predicted_memory": predicted,
    });
    if args.predict_memory {
        value["dtype"] = json!(common.dtype);
        return Ok(Printed {
            json: common.json,
            value,
            text: format!(
                "clo bench train --predict-memory: {}, {} ({}), {} rows x {} tokens, {}\n{prediction}\n",
                subject.label,
                method.name(),
                args.trainable,
                work.rows.len(),
                args.seq_len,
                common.dtype
            ),
        });
    }
    clo_core::limits::check_fits(
        &format!("clo bench train on {}", subject.label),
        predicted.total,
        "lower --batch-size or --seq-len, or add --grad-checkpoint and --logp-chunk; --predict-memory prints the estimate without running",
    )?;

    // The specs as given (`all`: the discrete GPUs it found, wgpu:0..N).
    let specs: Vec<String> = match &args.devices {
        Some(list) if list.trim() == "all" => {
            (0..devices.len()).map(|n| format!("wgpu:{n}")).collect()
        }
        Some(list) => list.split(',').map(|s| s.trim().to_string()).collect(),
        None => vec![common.device.clone()],
    };
    let measure = |k: usize| -> anyhow::Result<Timed> {
        time_train_steps(
            &subject,
            &run_config,
            objective,
            &work,
            &devices[..k],
            &specs[..k],
            common,
            args.lr,
        )
    };
    let tokens = work.tokens();
    let mut scaling = Vec::new();
    let mut single_tps = None;
    let (mut times, mut losses, mut memories) = (Vec::new(), Vec::new(), Vec::new());
    for k in if devices.len() > 1 {
        1..=devices.len()
    } else {
        1..=1
    } {
        let (t, l, m) = measure(k)?;
        let side = Side::new(t.clone(), common.warmup, tokens, flops, peak);
        let tps = side.tokens_per_s;
        let single = *single_tps.get_or_insert(tps);
        scaling.push(json!({
            "devices": specs[..k],
            "median_step_s": side.median_step_s,
            "tokens_per_s": tps,
            "peak_memory_bytes": m,
            "efficiency": tps / (k as f64 * single),
        }));
        (times, losses, memories) = (t, l, m);
    }
    let mut clo = Side::new(times, common.warmup, tokens, flops, peak);
    clo.losses = losses;
    clo.device_name = if devices.len() > 1 {
        specs.join(",")
    } else {
        machine
            .adapter
            .clone()
            .unwrap_or_else(|| "cpu (Flex)".into())
    };
    clo.peak_memory_bytes = memories.iter().flatten().copied().max();
    clo.memory_kind = if specs.iter().all(|s| !s.starts_with("wgpu")) {
        "peak RSS".into()
    } else if devices.len() > 1 {
        "largest device's pool reserved (max after each step)".into()
    } else {
        "device pool reserved (max after each step)".into()
    };

    let torch = match &common.compare_torch {
        Some(python) => {
            let spec = json!({
                "kind": "train",
                "config": subject.hf_config,
                "model_dir": subject.model_dir,
                "rows": work.rows,
                "objective": objective,
                "trainable": trainable,
                "lora_rank": run_config.lora_rank,
                "lora_alpha": run_config.lora_alpha,
                "lora_targets": run_config.lora_targets,
                "lr": args.lr,
                "weight_decay": run_config.weight_decay,
                "max_grad_norm": run_config.max_grad_norm,
            });
            let out = run_torch(python, spec, common, &machine)?;
            let mut side = torch_side(&out, common.warmup, tokens, flops, peak)?;
            side.losses = f64s(&out["losses"]);
            Some(side)
        }
        None => None,
    };
    let head = format!(
        "clo bench train: {}, {} ({}), {} {} x {} tokens ({} rows), {}, {}",
        subject.label,
        method.name(),
        args.trainable,
        args.batch_size,
        match method {
            Method::Clo => "quadruples",
            Method::Dpo => "pairs",
            _ => "sft pairs",
        },
        args.seq_len,
        work.rows.len(),
        common.dtype,
        common.device
    );
    value["tokens_per_step"] = json!(tokens);
    value["lr"] = json!(args.lr);
    let mut head = format!("{head}\n{prediction}");
    if devices.len() > 1 {
        value["scaling"] = Value::Array(scaling.clone());
        head.push_str(
            "\n  data parallel: devices  median step  tokens/s  efficiency  peak memory per device",
        );
        for row in &scaling {
            let mem: Vec<String> = row["peak_memory_bytes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|m| {
                            m.as_f64().map_or("-".into(), |b| {
                                format!("{:.2} GiB", b / (1u64 << 30) as f64)
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            head.push_str(&format!(
                "\n    {:<24} {:>8.3} s {:>9.1} {:>10.2}x  {}",
                row["devices"]
                    .as_array()
                    .map(|d| d
                        .iter()
                        .filter_map(|x| x.as_str())
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default(),
                row["median_step_s"].as_f64().unwrap_or(f64::NAN),
                row["tokens_per_s"].as_f64().unwrap_or(f64::NAN),
                row["efficiency"].as_f64().unwrap_or(f64::NAN),
                mem.join(" / ")
            ));
        }
    }
    Ok(finish(
        &mut value,
        head,
        common,
        &machine,
        flops,
        (peak, peak_source),
        clo,
        torch,
    ))
}

/// Each timed step's seconds and loss, and each device's peak memory.
type Timed = (Vec<f64>, Vec<f64>, Vec<Option<u64>>);

/// Times `warmup + steps` optimizer steps of `work` with the model on `devices` (data parallel
/// when more than one): each step's seconds and loss, and each device's peak memory (the
/// process's peak RSS for CPU devices, the allocator's reserved bytes for wgpu ones).
#[allow(clippy::too_many_arguments)]
fn time_train_steps(
    subject: &Subject,
    run_config: &RunConfig,
    objective: clo_core::train::Objective,
    work: &TrainWork,
    devices: &[Device],
    specs: &[String],
    common: &Common,
    lr: f64,
) -> anyhow::Result<Timed> {
    let device = devices[0].clone();
    let ad = run_config.autodiff_device(&device);
    let model = build_model(subject, &ad, common.seed)?;
    let model = run_config.trainable_model(model, &ad)?;
    let mut memory: Vec<MemoryWatch> = devices
        .iter()
        .zip(specs)
        .map(|(d, s)| MemoryWatch::new(d, s))
        .collect();
    let reference = if objective.needs_reference() {
        let plain = model.valid();
        let batch = collate(&work.pairs(), &device);
        let (sums, _) = batch_logps(&plain, &batch);
        sums.into_data()
            .try_into_vec_as::<f32>()
            .map_err(|e| anyhow::anyhow!("reading reference log-probs: {e:?}"))?
    } else {
        Vec::new()
    };
    let batch = work.micro_batch(reference);
    let mut trainer = Trainer::new(
        objective,
        OptimizerSettings::fine_tuning(run_config.weight_decay, run_config.max_grad_norm),
    )
    .with_logp_chunk(run_config.logp_chunk)
    .with_grad_checkpoint(run_config.grad_checkpoint)
    .with_replicas(
        &devices[1..]
            .iter()
            .map(|d| run_config.autodiff_device(d))
            .collect::<Vec<_>>(),
    );
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    let mut model = model;
    for _ in 0..common.warmup + common.steps {
        let t0 = Instant::now();
        let (next, report) = trainer.step(model, std::slice::from_ref(&batch), lr)?;
        times.push(t0.elapsed().as_secs_f64());
        losses.push(report.loss);
        model = next;
        memory.iter_mut().for_each(MemoryWatch::sample);
    }
    drop(model);
    let peaks = memory
        .iter()
        .map(|m| {
            let mut side = Side::new(vec![1.0], 0, 1, 0.0, None);
            m.finish(&mut side);
            side.peak_memory_bytes
        })
        .collect();
    Ok((times, losses, peaks))
}

fn bench_generate(args: &GenerateBenchArgs) -> anyhow::Result<Printed> {
    let common = &args.common;
    let subject = subject(common)?;
    let decoder = &subject.config.decoder;
    if args.seq_len + args.new_tokens > decoder.max_position_embeddings {
        bail!(
            "--seq-len {} + --new-tokens {} exceed the model's context of {} tokens",
            args.seq_len,
            args.new_tokens,
            decoder.max_position_embeddings
        );
    }
    if args.batch_size == 0 || args.new_tokens == 0 {
        bail!("--batch-size and --new-tokens must be at least 1");
    }
    let prompts = generation_prompts(
        args.batch_size,
        args.seq_len,
        decoder.vocab_size,
        common.seed,
    );
    let machine = machine(&common.device);
    let (peak, peak_source) = peak_flops(common, &machine);
    let flops =
        MatmulParams::of(decoder).generate_flops(args.batch_size, args.seq_len, args.new_tokens);
    let device = parse_device(&common.device)?;
    let model = build_model(&subject, &device, common.seed)?
        .store_frozen_in(common.dtype.resolve(&device)?);
    let mut memory = MemoryWatch::new(&device, &common.device);
    let configs = vec![
        SamplingConfig {
            temperature: 0.0,
            top_p: 1.0,
            seed: common.seed,
            max_new_tokens: args.new_tokens,
        };
        args.batch_size
    ];
    let mut times = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..common.warmup + common.steps {
        let t0 = Instant::now();
        let out = generate_batch(&model, &prompts, &[], &configs, &device, |_, _| {});
        times.push(t0.elapsed().as_secs_f64());
        ids = out.into_iter().map(|g| g.ids).collect::<Vec<_>>();
        memory.sample();
    }
    drop(model);
    let tokens = args.batch_size * args.new_tokens;
    let mut clo = Side::new(times, common.warmup, tokens, flops, peak);
    clo.device_name = machine
        .adapter
        .clone()
        .unwrap_or_else(|| "cpu (Flex)".into());
    memory.finish(&mut clo);
    let mut agreement = None;
    let torch = match &common.compare_torch {
        Some(python) => {
            let spec = json!({
                "kind": "generate",
                "config": subject.hf_config,
                "model_dir": subject.model_dir,
                "prompts": prompts,
                "new_tokens": args.new_tokens,
            });
            let out = run_torch(python, spec, common, &machine)?;
            let theirs: Vec<Vec<u32>> = serde_json::from_value(out["ids"].clone())
                .context("the PyTorch script's generated ids")?;
            // With the same weights (a model directory), greedy decoding agrees token for
            // token until float rounding flips a near tie.
            if subject.model_dir.is_some() {
                let same: usize = ids
                    .iter()
                    .zip(&theirs)
                    .map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count())
                    .sum();
                agreement = Some(same as f64 / tokens as f64);
            }
            Some(torch_side(&out, common.warmup, tokens, flops, peak)?)
        }
        None => None,
    };
    let head = format!(
        "clo bench generate: {}, greedy, {} x {} prompt tokens + {} new, {}, {}",
        subject.label, args.batch_size, args.seq_len, args.new_tokens, common.dtype, common.device
    );
    let mut value = json!({
        "kind": "generate",
        "model": subject.label,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "new_tokens": args.new_tokens,
        "generated_tokens": tokens,
    });
    if let Some(a) = agreement {
        value["greedy_prefix_agreement"] = json!(a);
    }
    Ok(finish(
        &mut value,
        head,
        common,
        &machine,
        flops,
        (peak, peak_source),
        clo,
        torch,
    ))
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

fn gib(bytes: Option<u64>) -> String {
    bytes.map_or("?".into(), |b| {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    })
}

#[allow(clippy::too_many_arguments)]
fn finish(
    value: &mut Value,
    head: String,
    common: &Common,
    machine: &Machine,
    flops: f64,
    (peak, peak_source): (Option<f64>, String),
    clo: Side,
    torch: Option<Side>,
) -> Printed {
    value["dtype"] = json!(common.dtype);
    value["device"] = json!(common.device);
    value["machine"] = json!(machine);
    value["flops_per_step"] = json!(flops);
    value["peak_flops"] = json!(peak);
    value["peak_flops_source"] = json!(peak_source);
    value["warmup"] = json!(common.warmup);
    value["steps"] = json!(common.steps);
    let mut text = format!(
        "{head}\nmachine: {}, {} logical CPUs",
        machine.cpu, machine.logical_cpus
    );
    if let Some(a) = &machine.adapter {
        text += &format!(", adapter {a}");
    }
    text += &format!(
        "\npeak FLOP/s: {}\n",
        match peak {
            Some(p) => format!("{:.1} GFLOP/s ({peak_source})", p / 1e9),
            None => peak_source.clone(),
        }
    );
    let line = |name: &str, s: &Side| {
        let mut l = format!(
            "{name:<8} median step {:.4} s  {:.1} tokens/s  peak memory {} ({})",
            s.median_step_s,
            s.tokens_per_s,
            gib(s.peak_memory_bytes),
            s.memory_kind
        );
        if let Some(m) = s.mfu {
            l += &format!("  MFU {:.1}%", m * 100.0);
        }
        if let Some(loss) = s.losses.first() {
            l += &format!("  step-0 loss {loss:.6}");
        }
        l += &format!("  [{}]", s.device_name);
        if let Some(v) = &s.versions {
            l += &format!(" [{v}]");
        }
        l + "\n"
    };
    text += &line("clo", &clo);
    if let Some(t) = &torch {
        text += &line("pytorch", t);
        let speed = clo.tokens_per_s / t.tokens_per_s;
        let memory = match (clo.peak_memory_bytes, t.peak_memory_bytes) {
            (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
            _ => None,
        };
        let loss_diff = match (clo.losses.first(), t.losses.first()) {
            (Some(a), Some(b)) => Some((a - b).abs()),
            _ => None,
        };
        text += &format!("ratio    clo/pytorch tokens/s {speed:.2}x");
        if let Some(m) = memory {
            text += &format!(", peak memory {m:.2}x");
        }
        text += "\n";
        value["ratio"] = json!({
            "tokens_per_s": speed,
            "peak_memory": memory,
            "step0_loss_abs_diff": loss_diff,
        });
    }
    value["clo"] = json!(clo);
    value["torch"] = json!(torch);
    Printed {
        json: common.json,
        value: value.clone(),
        text,
    }
}
