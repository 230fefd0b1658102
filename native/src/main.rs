//! `clo`: the command line of clo.

mod bench_cmd;
mod device;
mod distributed;
mod eval_cmd;
mod hints;
mod merge_cmd;
mod prepare_cmd;
mod pretrain_cmd;
mod quickstart_cmd;
mod serve;
mod settings_args;
mod train_cmd;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clo_core::generate::SamplingConfig;
use clo_core::load::models::Precision;
use clo_core::score::read_score_input;
use clo_core::{CoreError, Pretrained};
use indicatif::{ProgressBar, ProgressStyle};

use device::{DEVICE_HELP, parse_device};

/// Tensors of hundreds of megabytes are allocated and freed every step; mimalloc reuses their
/// pages instead of unmapping and faulting them in again (`clo bench` measured the difference).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (`include/mimalloc.h`): how long freed
/// memory waits before it is given back to the OS (default 10 ms; -1: never).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed memory mapped. With the default 10 ms purge delay mimalloc decommits a step's
/// freed tensors between two uses, and the kernel zeroes every page again when it is touched:
/// `perf` put 29% of a CPU training step in `clear_page_erms`, and `clo bench train` steps took
/// 1.4x as long. The peak RSS is the same (the pages are reused, not added); a memory limit is
/// the peak, never the steady state. `MIMALLOC_PURGE_DELAY` set by the user wins.
fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: called once at the start of `main`, before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

#[derive(Parser)]
#[command(
    name = "clo",
    version,
    about = "Adapt an English-centric LLM to a new language with Cross-Lingual Optimization"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log-probability of each response given its prompt, summed over response tokens.
    ///
    /// Input lines: {"prompt": str, "response": str} (the response gets EOS appended) or
    /// {"prompt_ids": [int], "response_ids": [int]} (scored as given). Output lines:
    /// {"logp": f64, "n_tokens": int, "token_logps": [f64]}, in input order.
    Score {
        /// Hugging Face model directory.
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, as
        /// `clo export --peft`, peft or the browser's download write it) to put on --model.
        /// --model may also be the adapter directory itself when its base_model_name_or_path
        /// is the base model's directory.
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        /// JSONL input.
        #[arg(long)]
        input: PathBuf,
        /// JSONL output, written when all lines are scored.
        #[arg(long)]
        output: PathBuf,
        #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
        device: String,
        /// Wrap text prompts in the model's chat template (one user message).
        #[arg(long)]
        chat_template: bool,
        /// Sequences per forward pass.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Refuse records whose prompt has more tokens than this (always: prompt and response
        /// beyond the model's context).
        #[arg(long)]
        max_prompt_tokens: Option<usize>,
        /// Weight storage: f32, f16, bf16 (half the memory; products in that type, the rest in
        /// f32) or auto (bf16/f16 where a GPU offers it, else f32).
        #[arg(long, default_value = "f32", value_name = "DTYPE")]
        dtype: Precision,
    },
    /// Continue a prompt (greedy with --temperature 0).
    Generate {
        #[arg(long)]
        model: PathBuf,
        /// A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors, as
        /// `clo export --peft`, peft or the browser's download write it) to put on --model.
        /// --model may also be the adapter directory itself when its base_model_name_or_path
        /// is the base model's directory.
        #[arg(long, value_name = "DIR")]
        adapter: Option<PathBuf>,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        max_new_tokens: usize,
        #[arg(long, default_value_t = 0.6)]
        temperature: f64,
        #[arg(long, default_value_t = 0.9)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
        device: String,
        /// Wrap the prompt in the model's chat template.
        #[arg(long)]
        chat_template: bool,
        /// Print one JSON object (text, token ids, stop reason) instead of streaming text.
        #[arg(long)]
        json: bool,
        /// Refuse a prompt of more tokens than this (always: one that fills the model's
        /// context). --max-new-tokens is capped so that prompt and answer fit the context.
        #[arg(long)]
        max_prompt_tokens: Option<usize>,
        /// Weight storage: f32, f16, bf16 (half the memory; products in that type, the rest in
        /// f32) or auto (bf16/f16 where a GPU offers it, else f32).
        #[arg(long, default_value = "f32", value_name = "DTYPE")]
        dtype: Precision,
    },
    /// Train a model on quadruples with CLO or a baseline (SFT, DPO, SFT+DPO).
    ///
    /// Writes RUN/config.toml, RUN/metrics.jsonl (one line per optimizer step; step 0 is the first
    /// batch before any update), resumable checkpoints in RUN/checkpoints/, the lowest-validation-
    /// loss weights in RUN/best/ and RUN/summary.json.
    Train(Box<train_cmd::TrainArgs>),
    /// Write a trained run as a Hugging Face model directory (--merged) or a PEFT adapter (--peft).
    Export(train_cmd::ExportArgs),
    /// Merge a base and two experts fine-tuned from it (a task expert and a language expert):
    /// layer swapping or task arithmetic, optionally reverting each expert's weak updates first.
    Merge(Box<merge_cmd::MergeArgs>),
    /// Build quadruples from English SFT data and a translator (JSONL in, JSONL out; resumable).
    Prepare(Box<prepare_cmd::PrepareArgs>),
    /// Evaluate a model: `clo eval mc` (multiple choice by log-likelihood), `gen` (language
    /// fidelity, S-index, generated answers), `judge` (win rate), `report` (tables and charts).
    #[command(subcommand)]
    Eval(eval_cmd::EvalCommand),
    /// Train a small Llama-architecture model from scratch (BPE tokenizer included) on a corpus:
    /// by default the toy world's English-centric corpus. Writes a Hugging Face model directory.
    Pretrain(Box<pretrain_cmd::PretrainArgs>),
    /// CLO against SFT in the built-in toy world, end to end: quadruples, training, held-out
    /// questions in both languages, a table and a report (minutes on a CPU, no download).
    Quickstart(Box<quickstart_cmd::QuickstartArgs>),
    /// Serve the JSON API, an OpenAI-compatible /v1 and the web UI (loopback by default).
    Serve(Box<serve::ServeArgs>),
    /// Time a training step or greedy generation on a real model shape (random weights) or a
    /// model directory; with --compare-torch, the same work in PyTorch eager and the ratios.
    #[command(subcommand)]
    Bench(bench_cmd::BenchCommand),
    /// Every device clo can train and run on: the CPU and each GPU adapter wgpu sees (kind,
    /// API, memory where reported, shader-f16, largest binding), with the --device value that
    /// selects it.
    Devices {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Architecture, parameter count, dtype, vocabulary and layers of a model directory.
    Inspect {
        #[arg(long)]
        model: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Mesa's Vulkan device-select layer connects to the Wayland or X display to order the GPUs;
/// where there is no session (`XDG_RUNTIME_DIR` unset: SSH, CI, a container) libwayland prints
/// "error: XDG_RUNTIME_DIR is invalid or not set in the environment." several times on every
/// command that opens wgpu. clo chooses its adapter itself (`--device`), so the layer is turned
/// off there (its own switch, `NODEVICE_SELECT=1`); a user's own setting wins.
fn quiet_headless_vulkan() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("XDG_RUNTIME_DIR").is_none()
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        // SAFETY: called at the start of `main`, before any other thread exists.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

fn main() -> ExitCode {
    keep_freed_pages();
    quiet_headless_vulkan();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    // Usage errors exit with 1 like every other error (clap's own default is 2); help and
    // --version print to stdout and exit 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            use clap::CommandFactory;
            let flags = hints::long_flags(&Cli::command());
            eprintln!("error: {}", hints::with_flags(&format!("{err:#}"), &flags));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Score {
            model,
            adapter,
            input,
            output,
            device,
            chat_template,
            batch_size,
            max_prompt_tokens,
            dtype,
        } => score(
            &ScoreJob {
                model: &model,
                adapter: adapter.as_deref(),
                input: &input,
                output: &output,
                chat: chat_template,
                batch_size,
                max_prompt_tokens,
                dtype,
            },
            &device,
        ),
        Command::Generate {
            model,
            adapter,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            device,
            chat_template,
            json,
            max_prompt_tokens,
            dtype,
        } => {
            let mut config = SamplingConfig {
                temperature,
                top_p,
                seed,
                max_new_tokens,
            };
            config.validate()?;
            let device = parse_device(&device)?;
            let lm = load_model(&model, adapter.as_deref(), &device, dtype)?;
            warn_if_no_template(&lm, chat_template);
            let prompt_ids = lm.tokenizer.prompt_ids(&prompt, chat_template)?;
            config.max_new_tokens = clo_core::generate::fit_to_context(
                "--prompt",
                prompt_ids.len(),
                max_new_tokens,
                lm.context(),
                max_prompt_tokens,
            )?;
            let mut stdout = std::io::stdout().lock();
            let mut shown = String::new();
            let mut so_far = Vec::new();
            let out = lm.generate(&prompt_ids, &config, |id| {
                if json {
                    return;
                }
                // Decode the whole continuation each time: a token may end a multi-byte
                // character that an earlier one began.
                so_far.push(id);
                if let Ok(text) = lm.tokenizer.decode(&so_far, true)
                    && text.starts_with(&shown)
                    && !text.ends_with('\u{FFFD}')
                {
                    let _ = write!(stdout, "{}", &text[shown.len()..]);
                    let _ = stdout.flush();
                    shown = text;
                }
            });
            let text = lm.tokenizer.decode(&out.ids, true)?;
            if json {
                let value = serde_json::json!({"text": text, "ids": out.ids, "stop": out.stop, "prompt_ids": prompt_ids});
                writeln!(stdout, "{value}")?;
            } else {
                writeln!(stdout, "{}", &text[shown.len().min(text.len())..])?;
            }
            Ok(())
        }
        Command::Train(args) => train_cmd::run_train(*args),
        Command::Export(args) => train_cmd::run_export(args),
        Command::Merge(args) => merge_cmd::run_merge(*args),
        Command::Devices { json } => device::run_devices(json),
        Command::Eval(cmd) => eval_cmd::run_eval(cmd),
        Command::Prepare(args) => prepare_cmd::run_prepare(*args),
        Command::Pretrain(args) => pretrain_cmd::run_pretrain(*args),
        Command::Quickstart(args) => quickstart_cmd::run_quickstart(*args),
        Command::Serve(args) => serve::run_serve(*args),
        Command::Bench(cmd) => bench_cmd::run_bench(cmd),
        Command::Inspect { model, json } => {
            let s = Pretrained::summarize(&model)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("model:        {}", s.dir.display());
                println!("model_type:   {}", s.model_type);
                println!("architecture: {}", s.architecture);
                println!(
                    "parameters:   {} ({:.2} M)",
                    s.num_parameters,
                    s.num_parameters as f64 / 1e6
                );
                println!(
                    "dtype:        {} on disk ({}), computed in f32",
                    s.checkpoint_dtypes.join(", "),
                    s.torch_dtype.as_deref().unwrap_or("torch_dtype not set")
                );
                println!(
                    "vocab:        {} (tokenizer {})",
                    s.vocab_size, s.tokenizer_vocab_size
                );
                println!("layers:       {}", s.num_layers);
                println!(
                    "hidden:       {} (MLP {})",
                    s.hidden_size, s.intermediate_size
                );
                println!(
                    "heads:        {} query, {} key/value, head_dim {}",
                    s.num_heads, s.num_kv_heads, s.head_dim
                );
                println!("rope:         theta {} {}", s.rope_theta, s.rope_scaling);
                let windows: Vec<String> = s
                    .sliding_windows
                    .iter()
                    .map(|w| w.map_or("full".into(), |w| w.to_string()))
                    .collect();
                println!("attention:    {}", windows.join(" "));
                println!(
                    "tied lm_head: {}   qkv bias: {}",
                    s.tie_word_embeddings, s.qkv_bias
                );
                println!("context:      {}", s.max_position_embeddings);
                match &s.chat_template_file {
                    Some(file) => println!("chat:         chat template from {}", file.display()),
                    None => println!("chat:         no chat template (plain fallback)"),
                }
                println!("eos ids:      {:?}", s.eos_token_ids);
                println!("attention-only trains: {}", s.attention_targets.join(", "));
                println!(
                    "files:        {}",
                    s.checkpoint_files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(())
        }
    }
}

/// What `clo score` reads and writes.
#[derive(Clone, Copy)]
struct ScoreJob<'a> {
    model: &'a Path,
    adapter: Option<&'a Path>,
    input: &'a Path,
    output: &'a Path,
    chat: bool,
    batch_size: usize,
    max_prompt_tokens: Option<usize>,
    dtype: Precision,
}

/// `--model`, with `--adapter`'s PEFT adapter on it when given, its weights stored as `dtype`.
fn load_model(
    model: &Path,
    adapter: Option<&Path>,
    device: &burn::tensor::Device,
    dtype: Precision,
) -> anyhow::Result<Pretrained> {
    let lm = Pretrained::load(model, device)?;
    let mut lm = match adapter {
        Some(dir) => lm.with_adapter(dir)?,
        None => lm,
    };
    let stored = dtype.resolve(device)?;
    lm.model = lm.model.store_frozen_in(stored);
    Ok(lm)
}

/// `--chat-template` on a model that has none: say so on stderr, where a user sees it, instead
/// of falling back silently.
pub(crate) fn warn_if_no_template(lm: &Pretrained, chat_template: bool) {
    if chat_template && !lm.tokenizer.has_chat_template() {
        eprintln!(
            "warning: --chat-template was given but {} has no chat template \
             (no chat_template.jinja, chat_template.json or tokenizer_config.json `chat_template`); \
             prompts use the plain fallback \"### Instruction: ... ### Response:\"",
            lm.dir.display()
        );
    }
}

fn score(job: &ScoreJob, device: &str) -> anyhow::Result<()> {
    let ScoreJob {
        model,
        adapter,
        input,
        output,
        chat,
        batch_size,
        max_prompt_tokens,
        dtype,
    } = *job;
    clo_core::limits::SCORE_BATCH.check_as("--batch-size", "clo score", batch_size)?;
    let device = &parse_device(device)?;
    let records = read_score_input(input)?;
    let lm = load_model(model, adapter, device, dtype)?;
    warn_if_no_template(&lm, job.chat);
    let vocab = lm.config.decoder.vocab_size;
    let mut pairs = Vec::with_capacity(records.len());
    for (line, record) in &records {
        let bad = |message: String| CoreError::Input {
            path: input.to_path_buf(),
            line: *line,
            message,
            hint: "prompt_ids and response_ids must be token ids of this model's vocabulary",
        };
        let pair = record
            .to_pair(&lm.tokenizer, chat, vocab)
            .map_err(|e| match e {
                CoreError::Invalid(message) => bad(message),
                e => e,
            })?;
        // Refused before any forward pass, by the rule generation uses: the prompt within its
        // limit, and the response within what the context leaves after it.
        let fits = clo_core::generate::fit_to_context(
            &format!("{}:{line}: the prompt", input.display()),
            pair.prompt.len(),
            pair.response.len(),
            lm.context(),
            max_prompt_tokens,
        )?;
        if fits < pair.response.len() {
            return Err(CoreError::TooLong {
                what: format!("{}:{line}: prompt and response", input.display()),
                tokens: pair.prompt.len() + pair.response.len(),
                limit: lm.context(),
                why: "the model's context, max_position_embeddings".into(),
                hint: "shorten or drop the record; nothing was scored",
            }
            .into());
        }
        pairs.push(pair);
    }

    let bar = ProgressBar::new(pairs.len() as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} records {per_sec} eta {eta}")
            .expect("valid template"),
    );
    let mut lines = String::new();
    for chunk in pairs.chunks(batch_size) {
        for score in lm.score(chunk) {
            lines.push_str(&serde_json::to_string(&score)?);
            lines.push('\n');
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(clo_core::fsutil::write_atomically(
        output,
        lines.as_bytes(),
    )?)
}
