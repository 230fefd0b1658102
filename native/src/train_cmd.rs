//! `clo train` and `clo export`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use clo_core::train::{Method, Outcome, Progress, RunConfig, TrainOptions, TrainableKind, train};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::{DEVICE_HELP, parse_device};

/// Settings of `clo train`. Each one overrides `--config`, which overrides the paper's defaults.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Hugging Face model directory to adapt.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Quadruple JSONL: {"id","lang","x_en","y_en","x_tgt","y_tgt"} per line.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Objective: clo | sft | sft-eng | sft-tgt | dpo | sft+dpo.
    #[arg(long)]
    method: Option<Method>,
    /// What trains: attention (q,k,v,o; the paper's) | lora | full.
    #[arg(long)]
    trainable: Option<TrainableKind>,
    /// Run directory (config.toml, metrics.jsonl, checkpoints/, best/, summary.json).
    #[arg(long)]
    out: PathBuf,
    /// A run.toml with any of the keys of RUN/config.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Optimizer steps per stage (default: --epochs passes over the data).
    #[arg(long)]
    steps: Option<usize>,
    /// Passes over the training split [default: 1].
    #[arg(long)]
    epochs: Option<usize>,
    /// Examples per micro-batch: quadruples (clo), pairs (dpo, sft) [default: 8].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Peak learning rate [default: 5e-5].
    #[arg(long)]
    lr: Option<f64>,
    /// Learning rate at the end of the cosine decay [default: 1.1e-6].
    #[arg(long)]
    min_lr: Option<f64>,
    /// Linear warmup: a fraction of the steps if < 1, else a step count [default: 0.03].
    #[arg(long)]
    warmup: Option<f64>,
    /// DPO/CLO temperature beta [default: 0.1].
    #[arg(long)]
    beta: Option<f64>,
    /// CLO weight of the NLL term: lambda * NLL + (1 - lambda) * L_CL [default: 0.5].
    #[arg(long)]
    lambda: Option<f64>,
    /// Longest sequence in tokens; longer responses are cut, longer prompts dropped [default: 3000].
    #[arg(long)]
    max_len: Option<usize>,
    /// LoRA rank [default: 8].
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA alpha (scale alpha / rank) [default: 16].
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// LoRA target modules, comma-separated [default: q_proj,k_proj,v_proj,o_proj].
    #[arg(long, value_delimiter = ',')]
    lora_targets: Option<Vec<String>>,
    /// With --trainable attention: only layers FROM..TO (e.g. 4,8 trains layers 4-7).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    layers: Option<Vec<usize>>,
    /// Seed of data order, split and LoRA init [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the file order instead of shuffling each epoch.
    #[arg(long)]
    no_shuffle: bool,
    /// Share of quadruples held out for validation; 0 = none [default: 0.05].
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Validate every K steps (default: 10 times per stage).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Write a resumable checkpoint every K steps (default: --eval-every).
    #[arg(long)]
    save_every: Option<usize>,
    /// Global gradient-norm clip [default: 1.0].
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// AdamW weight decay [default: 0].
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
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
        let mut c = if self.resume && saved.exists() {
            RunConfig::from_file(&saved)?
        } else {
            RunConfig::default()
        };
        if let Some(path) = &self.config {
            c = RunConfig::from_file(path)?;
        }
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { c.$field = v.clone().into(); } )* };
        }
        set!(
            model, data, method, trainable, epochs, batch_size, grad_accum, lr, min_lr, warmup
        );
        set!(
            beta,
            lambda,
            max_len,
            lora_rank,
            lora_alpha,
            lora_targets,
            seed,
            val_fraction
        );
        set!(max_grad_norm, weight_decay);
        if self.steps.is_some() {
            c.steps = self.steps;
        }
        if self.eval_every.is_some() {
            c.eval_every = self.eval_every;
        }
        if self.save_every.is_some() {
            c.save_every = self.save_every;
        }
        if let Some(l) = &self.layers {
            c.layers = Some([l[0], l[1]]);
        }
        if self.no_shuffle {
            c.shuffle = false;
        }
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
    let device = parse_device(&args.device)?;
    let mut opts = TrainOptions::new(
        &args.out,
        args.cache_dir.clone().unwrap_or_else(default_cache_dir),
    );
    opts.resume = args.resume;
    opts.force = args.force;

    let mut bar = TrainBar::new(true);
    let mut report = |p: Progress| bar.update(p);
    let outcome = train(&config, &opts, &device, &mut report);
    bar.bar.finish_and_clear();
    match outcome? {
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
    #[arg(long)]
    run: PathBuf,
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
    if !args.run.is_dir() {
        bail!("{}: no such run directory", args.run.display());
    }
    use clo_core::export;
    let (from, what, out) = if let Some(out) = &args.gguf {
        let Some(ty) = clo_core::gguf::ExportType::parse(&args.quant) else {
            bail!(
                "--quant {}: not a GGUF export type; use one of {}",
                args.quant,
                clo_core::gguf::ExportType::NAMES
            );
        };
        let from = export::export_gguf(&args.run, &args.from, out, ty, &device, args.force);
        (from, format!("GGUF, {}", args.quant.to_lowercase()), out)
    } else if let Some(out) = &args.gguf_lora {
        let from = export::export_gguf_lora(&args.run, &args.from, out, &device, args.force);
        (from, "llama.cpp LoRA adapter".into(), out)
    } else {
        let out = args
            .out
            .as_ref()
            .expect("clap requires --out without --gguf");
        if args.peft {
            let from = export::export_peft(&args.run, &args.from, out, &device, args.force);
            (from, "PEFT adapter".into(), out)
        } else {
            let from = export::export_merged(&args.run, &args.from, out, &device, args.force);
            (from, "merged model".into(), out)
        }
    };
    let from = from.with_context(|| format!("export of {}", args.run.display()))?;
    println!("exported {} ({what}) to {}", from.display(), out.display());
    Ok(())
}
