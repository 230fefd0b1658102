//! `clo train` and `clo export`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use clo_core::train::{Outcome, Progress, RunConfig, TrainOptions, train};
use indicatif::{ProgressBar, ProgressStyle};

use crate::settings_args::SettingArgs;

use crate::device::{DEVICE_HELP, parse_device, parse_devices};

/// Settings of `clo train`. Each one overrides `--config`, which overrides the paper's defaults.
/// The setting flags are built from clo-core's table (`train::config::SETTINGS`), which the API's
/// schema and the web form are built from too.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Run directory (config.toml, metrics.jsonl, checkpoints/, best/, summary.json).
    #[arg(long)]
    out: PathBuf,
    /// A run.toml with any of the keys of RUN/config.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// One flag per run setting, from clo-core's table.
    #[command(flatten)]
    settings: SettingArgs,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
    /// Data parallelism: comma-separated devices as --device takes them (e.g. wgpu:0,wgpu:1;
    /// kinds may mix, e.g. cpu,wgpu:cpu; `all` = every discrete GPU). One model replica per
    /// device; each batch is split across them by whole quadruples and their gradients summed
    /// before one update, so the run equals one device with the same batch. Overrides --device.
    #[arg(long, value_name = "LIST")]
    devices: Option<String>,
    /// Data parallelism across processes: `mpi` (run under mpirun; needs a clo built with
    /// --features mpi). Each rank trains on its own --devices, each batch is split across the
    /// ranks by whole quadruples, gradients are summed over MPI; rank 0 writes the run.
    #[arg(long, value_name = "KIND", help = crate::distributed::DISTRIBUTED_HELP)]
    distributed: Option<String>,
    /// Continue the run in --out from its newest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Start afresh where --out holds another run or files clo did not write: the old --out is
    /// moved aside (OUT.replaced-TIME), never deleted.
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Cache of reference log-probs shared by runs [default: $XDG_CACHE_HOME/clo or ~/.cache/clo].
    #[arg(long, env = "CLO_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

impl TrainArgs {
    /// Defaults, then RUN/config.toml (when resuming), then --config, then flags.
    fn resolve(&self) -> anyhow::Result<RunConfig> {
        let saved = self.out.join("config.toml");
        let c = if self.resume && saved.exists() {
            RunConfig::from_file(&saved)?
        } else {
            RunConfig::default()
        };
        let c = match &self.config {
            Some(path) => RunConfig::from_file(path)?,
            None => c,
        };
        let c = c.with_settings(self.settings.0.iter().map(|(k, v)| (*k, v.clone())))?;
        c.validate()?;
        Ok(c)
    }
}

fn default_cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("clo")
}

pub fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let (device, replicas) = match &args.devices {
        Some(list) => {
            let mut all = parse_devices(list)?;
            let main = all.remove(0);
            (main, all)
        }
        None => (parse_device(&args.device)?, Vec::new()),
    };
    let mut opts = TrainOptions::new(
        &args.out,
        args.cache_dir.clone().unwrap_or_else(default_cache_dir),
    );
    opts.replicas = replicas;
    let mut rank = 0;
    if let Some(kind) = &args.distributed {
        let c = crate::distributed::collective(kind)?;
        rank = c.rank();
        opts.collective = Some(c);
    }
    opts.resume = args.resume;
    opts.force = args.force;

    // Across processes, rank 0 alone shows progress and results.
    let mut bar = TrainBar::new(true);
    let mut report = |p: Progress| {
        if rank == 0 {
            bar.update(p)
        }
    };
    let outcome = train(&config, &opts, &device, &mut report);
    bar.bar.finish_and_clear();
    let outcome = outcome.map_err(|e| {
        if opts.collective.is_some() {
            anyhow::Error::from(e).context(format!("rank {rank}"))
        } else {
            e.into()
        }
    })?;
    if rank != 0 {
        return Ok(());
    }
    match outcome {
        Outcome::Finished(s) => {
            println!(
                "{} finished: {} steps, loss {} -> {}{}",
                config.method.name(),
                s.steps,
                fmt(s.first_loss),
                fmt(s.last_loss),
                match (s.best_step, s.best_val_loss) {
                    (Some(step), Some(v)) =>
                        format!(", best validation loss {v:.4} at step {step}"),
                    _ => String::new(),
                }
            );
            println!("result: {}", s.result.display());
            println!("metrics: {}", args.out.join("metrics.jsonl").display());
        }
        Outcome::Cancelled { step, checkpoint } => {
            println!(
                "stopped at step {step}; resume with --resume (checkpoint {})",
                checkpoint.display()
            );
        }
    }
    Ok(())
}

/// Training progress on one bar: the reference pass, then the steps of each stage.
pub struct TrainBar {
    pub bar: ProgressBar,
    stage: &'static str,
    /// Also print the data split and every checkpoint written.
    verbose: bool,
}

impl TrainBar {
    pub fn new(verbose: bool) -> Self {
        Self {
            bar: ProgressBar::hidden(),
            stage: "",
            verbose,
        }
    }

    fn show(&self, template: &str) {
        self.bar
            .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        self.bar
            .set_style(ProgressStyle::with_template(template).expect("valid template"));
    }

    pub fn update(&mut self, p: Progress) {
        let bar = &self.bar;
        match p {
            Progress::Prepared {
                train,
                val,
                dropped,
            } => {
                if self.verbose {
                    eprintln!(
                        "data: {train} training and {val} validation quadruples ({dropped} dropped: prompt reaches max_len)"
                    );
                }
            }
            Progress::Reference {
                stage,
                done,
                total,
                cached,
            } => {
                if cached {
                    if self.verbose {
                        eprintln!("{stage}: reference log-probs from the cache");
                    }
                    return;
                }
                if bar.is_hidden() || bar.length() != Some(total as u64) || self.stage != stage {
                    bar.set_prefix(stage.to_string());
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                    self.show("{prefix} reference {bar:30} {pos}/{len} examples eta {eta}");
                    self.stage = stage;
                }
                bar.set_position(done as u64);
            }
            Progress::Stage {
                stage,
                total_steps,
                done_steps,
            } => {
                bar.set_prefix(stage.to_string());
                bar.set_length(total_steps as u64);
                bar.set_position(done_steps as u64);
                self.show("{prefix} {bar:30} step {pos}/{len} {msg} eta {eta}");
                bar.reset_eta();
            }
            Progress::Step(m) => {
                bar.inc(1);
                let mut msg = format!("loss {:.4} {:.0} tok/s", m.loss, m.tokens_per_s);
                if let Some(v) = m.val_loss {
                    msg.push_str(&format!(" val {v:.4}"));
                }
                bar.set_message(msg);
            }
            Progress::Checkpoint(dir) => {
                if self.verbose {
                    bar.println(format!("checkpoint {}", dir.display()));
                }
            }
        }
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.4}"))
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run directory of `clo train`.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    run: Option<PathBuf>,
    /// Instead of a run: a model directory (or GGUF file), or a PEFT adapter directory whose
    /// base_model_name_or_path is its base, such as a model or adapter downloaded from the
    /// browser's Train in browser page; written with --out (merged) or --gguf.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["gguf_lora", "peft"])]
    model: Option<PathBuf>,
    /// A PEFT LoRA adapter directory to merge into --model.
    #[arg(long, value_name = "DIR", requires = "model")]
    adapter: Option<PathBuf>,
    /// Output directory: created, or replaced atomically when an earlier export wrote it.
    /// Anything else there is refused (see --force); a run directory never is an output.
    #[arg(long, required_unless_present_any = ["gguf", "gguf_lora"])]
    out: Option<PathBuf>,
    /// Write one GGUF file (llama.cpp, Ollama, LM Studio) with the adapters merged, the
    /// tokenizer, chat template and EOS; 2-D tensors in --quant.
    #[arg(long, value_name = "OUT.gguf", conflicts_with_all = ["out", "gguf_lora", "peft", "merged"])]
    gguf: Option<PathBuf>,
    /// Tensor type of --gguf: f16, q8_0, q4_0 (or f32). Norms stay f32; rows that do not fill
    /// whole 32-value blocks fall back to f16.
    #[arg(long, default_value = "f16", requires = "gguf")]
    quant: String,
    /// Write a LoRA run's adapter as a llama.cpp LoRA GGUF (`llama-cli -m BASE.gguf --lora`).
    #[arg(long, value_name = "OUT.gguf", conflicts_with_all = ["out", "peft", "merged"])]
    gguf_lora: Option<PathBuf>,
    /// Replace an --out that clo export did not write: it is moved aside (OUT.replaced-TIME),
    /// never deleted.
    #[arg(long)]
    force: bool,
    /// A Hugging Face model directory with the adapters merged (default).
    #[arg(long, conflicts_with = "peft")]
    merged: bool,
    /// A PEFT adapter (adapter_config.json + adapter_model.safetensors); LoRA runs only.
    #[arg(long)]
    peft: bool,
    /// Which weights: best (lowest validation loss), last, or a checkpoint directory.
    #[arg(long, default_value = "best")]
    from: String,
}

pub fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    let device = burn::tensor::Device::flex();
    use clo_core::export;
    if let Some(model) = &args.model {
        let adapter = args.adapter.as_deref();
        let (what, out) = if let Some(out) = &args.gguf {
            let Some(ty) = clo_core::gguf::ExportType::parse(&args.quant) else {
                bail!(
                    "--quant {}: not a GGUF export type; use one of {}",
                    args.quant,
                    clo_core::gguf::ExportType::NAMES
                );
            };
            export::export_model_gguf(model, adapter, out, ty, &device, args.force)
                .with_context(|| format!("export of {}", model.display()))?;
            (format!("GGUF, {}", args.quant.to_lowercase()), out)
        } else {
            let out = args
                .out
                .as_ref()
                .expect("clap requires --out without --gguf");
            export::export_model_merged(model, adapter, out, &device, args.force)
                .with_context(|| format!("export of {}", model.display()))?;
            ("merged model".to_string(), out)
        };
        let from = match adapter {
            Some(a) => format!("{} + {}", model.display(), a.display()),
            None => model.display().to_string(),
        };
        println!("exported {from} ({what}) to {}", out.display());
        return Ok(());
    }
    let run = args
        .run
        .as_ref()
        .expect("clap requires --run without --model");
    if !run.is_dir() {
        bail!("{}: no such run directory", run.display());
    }
    let (from, what, out) = if let Some(out) = &args.gguf {
        let Some(ty) = clo_core::gguf::ExportType::parse(&args.quant) else {
            bail!(
                "--quant {}: not a GGUF export type; use one of {}",
                args.quant,
                clo_core::gguf::ExportType::NAMES
            );
        };
        let from = export::export_gguf(run, &args.from, out, ty, &device, args.force);
        (from, format!("GGUF, {}", args.quant.to_lowercase()), out)
    } else if let Some(out) = &args.gguf_lora {
        let from = export::export_gguf_lora(run, &args.from, out, &device, args.force);
        (from, "llama.cpp LoRA adapter".into(), out)
    } else {
        let out = args
            .out
            .as_ref()
            .expect("clap requires --out without --gguf");
        if args.peft {
            let from = export::export_peft(run, &args.from, out, &device, args.force);
            (from, "PEFT adapter".into(), out)
        } else {
            let from = export::export_merged(run, &args.from, out, &device, args.force);
            (from, "merged model".into(), out)
        }
    };
    let from = from.with_context(|| format!("export of {}", run.display()))?;
    println!("exported {} ({what}) to {}", from.display(), out.display());
    Ok(())
}
