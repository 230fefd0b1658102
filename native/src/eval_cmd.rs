//! `clo eval`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use clo_core::Pretrained;
use clo_core::eval::generated::{GenConfig, eval_gen, gen_stats, read_gen_prompts};
use clo_core::eval::judge::{judge_pair, read_pairs, win_rates};
use clo_core::eval::langid::{LanguageIdentifier, Lingua};
use clo_core::eval::mc::{eval_mc, mc_accuracy, read_mc_tasks};
use clo_core::eval::{EvalResults, ModelRef};
use clo_core::fsutil::{Claim, claim_output, write_atomically};
use clo_core::generate::SamplingConfig;
use clo_core::openai::{ChatClient, ChatMessage, ClientOptions, EndpointSpec, map_concurrent};
use clo_core::train::reference::weights_digest;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::device::{DEVICE_HELP, parse_device};

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Multiple choice by log-likelihood (BELEBELE style): the option label with the highest
    /// log-likelihood after the prompt is the answer. Writes OUT/results.json and
    /// OUT/responses.jsonl.
    Mc(McArgs),
    /// Generation: answers every prompt (sampling, batched), identifies each response's
    /// language and reports language fidelity, the S-index of code-switching, and for
    /// MMMLU-style records the accuracy of the extracted answer. Writes OUT/results.json and
    /// OUT/responses.jsonl.
    Gen(GenArgs),
    /// Pairwise win rate of A's responses over B's by an LLM judge (the paper's ranking prompt),
    /// both orders. Writes OUT/results.json and OUT/responses.jsonl.
    Judge(JudgeArgs),
    /// Gathers the results.json of evals under run directories and writes OUT/report.md (a
    /// Markdown table) and SVG charts: fidelity, accuracy and win rate per method and
    /// language, fidelity against data size.
    Report(ReportArgs),
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run directories, eval output directories or results.json files (searched 4 deep).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "report")]
    out: PathBuf,
    /// Replace an OUT that holds files clo eval did not write (they are moved aside, not
    /// deleted).
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
pub struct GenArgs {
    /// Hugging Face model directory (e.g. `clo export` output).
    #[arg(long)]
    model: PathBuf,
    /// JSONL: {"id"?, "prompt", "lang"} (open) or {"id"?, "question", "options": [4],
    /// "answer": 0-3 or "A"-"D", "lang"} (MMMLU style) per line.
    #[arg(long)]
    prompts: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace an OUT that holds files clo eval did not write (they are moved aside, not
    /// deleted).
    #[arg(long)]
    force: bool,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[arg(long, default_value_t = 0.6)]
    temperature: f64,
    #[arg(long, default_value_t = 0.9)]
    top_p: f64,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Send prompts as raw text instead of through the model's chat template.
    #[arg(long)]
    no_chat_template: bool,
    /// Languages language identification may answer with (comma-separated ISO 639-1 codes);
    /// default: English and the prompts' languages.
    #[arg(long, value_delimiter = ',')]
    languages: Vec<String>,
}

#[derive(Args, Debug)]
pub struct JudgeArgs {
    /// responses.jsonl of the model under test (e.g. from `clo eval gen`).
    #[arg(long)]
    a: PathBuf,
    /// responses.jsonl of the baseline, over the same prompts.
    #[arg(long)]
    b: PathBuf,
    /// The judge: openai:BASE_URL#MODEL (any OpenAI-compatible chat endpoint).
    #[arg(long)]
    judge: String,
    /// Output directory [default: judge/ beside A's responses].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace an OUT that holds files clo eval did not write (they are moved aside, not
    /// deleted).
    #[arg(long)]
    force: bool,
    /// Requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Requests per second, 0 for no limit.
    #[arg(long, default_value_t = 0.0)]
    rate_limit: f64,
    /// Times an unreadable judge answer is asked again before it counts as invalid.
    #[arg(long, default_value_t = 2)]
    retries: usize,
    /// Environment variable holding the API key (sent as a bearer token), if set.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// Sampling temperature of the judge.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
}

#[derive(Args, Debug)]
pub struct McArgs {
    /// Hugging Face model directory (e.g. `clo export` output).
    #[arg(long)]
    model: PathBuf,
    /// JSONL: {"passage", "question", "options": [4], "answer": 0-3, "lang"} per line.
    #[arg(long)]
    tasks: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Replace an OUT that holds files clo eval did not write (they are moved aside, not
    /// deleted).
    #[arg(long)]
    force: bool,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
    /// Records per forward pass (4 rows each).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Wrap each prompt in the model's chat template (default: the raw text, as the paper).
    #[arg(long)]
    chat_template: bool,
}

pub fn run_eval(cmd: EvalCommand) -> anyhow::Result<()> {
    match cmd {
        EvalCommand::Mc(args) => mc(args),
        EvalCommand::Gen(args) => generation(args),
        EvalCommand::Judge(args) => judge(args),
        EvalCommand::Report(args) => report(args),
    }
}

/// Files an eval output directory holds when clo eval wrote it.
fn is_eval_output(dir: &Path) -> bool {
    clo_core::fsutil::holds_only(dir, |name| {
        matches!(name, "results.json" | "responses.jsonl" | "report.md") || name.ends_with(".svg")
    })
}

/// Checks an eval's output directory before any work: never a run directory itself (an eval of
/// a run goes below it, as RUN/eval/gen), and nothing there that clo eval did not write
/// (unless --force, which moves it aside).
fn claim_out(out: &Path, force: bool) -> anyhow::Result<()> {
    if clo_core::fsutil::is_run_dir(out) {
        bail!(
            "--out {}: that is a training run directory; write the eval below it (for example --out {}/eval)",
            out.display(),
            out.display()
        );
    }
    if let Claim::MovedAside(old) = claim_output(out, "clo eval", force, is_eval_output)? {
        eprintln!(
            "--force: the old {} was moved to {}",
            out.display(),
            old.display()
        );
    }
    Ok(())
}

fn report(args: ReportArgs) -> anyhow::Result<()> {
    claim_out(&args.out, args.force)?;
    let entries = clo_core::eval::report::collect(&args.dirs)?;
    let files = clo_core::eval::report::render(&entries);
    for (name, text) in &files {
        write_atomically(&args.out.join(name), text.as_bytes())?;
    }
    print!("{}", files["report.md"]);
    println!("report: {}", args.out.join("report.md").display());
    Ok(())
}

fn bar(len: usize, what: &str) -> ProgressBar {
    ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .expect("valid template"),
    )
}

fn write_jsonl<T: serde::Serialize>(path: &std::path::Path, items: &[T]) -> anyhow::Result<()> {
    let mut lines = String::new();
    for item in items {
        lines.push_str(&serde_json::to_string(item)?);
        lines.push('\n');
    }
    write_atomically(path, lines.as_bytes())?;
    Ok(())
}

fn generation(args: GenArgs) -> anyhow::Result<()> {
    clo_core::limits::SCORE_BATCH.check_as("--batch-size", "clo eval", args.batch_size)?;
    let sampling = SamplingConfig {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        max_new_tokens: args.max_new_tokens,
    };
    sampling.validate()?;
    claim_out(&args.out, args.force)?;
    let records = read_gen_prompts(&args.prompts)?;
    let mut languages = args.languages.clone();
    if languages.is_empty() {
        languages.push("en".into());
        languages.extend(records.iter().map(|r| r.lang.clone()));
    }
    let langid = Lingua::new(&languages)?;
    let device = parse_device(&args.device)?;
    let lm = Pretrained::load(&args.model, &device)?;
    let config = GenConfig {
        sampling,
        chat_template: !args.no_chat_template,
        batch_size: args.batch_size,
    };
    let progress = bar(records.len(), "gen");
    let items = eval_gen(&lm, &records, &langid, &config, &mut |n| {
        progress.inc(n as u64)
    })?;
    progress.finish_and_clear();
    let (per_language, overall) = gen_stats(&items);
    let results = EvalResults::Gen {
        model: ModelRef {
            dir: args.model.clone(),
            weights_sha256: weights_digest(&lm.model),
        },
        config: json!({
            "prompts": args.prompts,
            "generation": config,
            "language_id": {"identifier": "lingua", "languages": langid.languages()},
            "fidelity": "share of responses identified as the prompt's language",
            "s_index": "language switches / (labelled words - 1), per response",
        }),
        per_language: per_language.clone(),
        overall: overall.clone(),
    };
    write_jsonl(&args.out.join("responses.jsonl"), &items)?;
    results.write(&args.out.join("results.json"))?;
    println!(
        "{:<6} {:>5} {:>9} {:>8} {:>8} {:>9}",
        "lang", "n", "fidelity", "stderr", "s_index", "choice"
    );
    for (lang, st) in per_language.iter().chain([(&"all".to_string(), &overall)]) {
        let choice = st
            .choice_accuracy
            .map(|a| format!("{:.4}", a.accuracy))
            .unwrap_or_else(|| "-".into());
        let s = st
            .s_index_mean
            .map(|s| format!("{s:.4}"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{lang:<6} {:>5} {:>9.4} {:>8.4} {s:>8} {choice:>9}",
            st.n, st.fidelity.accuracy, st.fidelity.stderr
        );
    }
    println!("results: {}", args.out.join("results.json").display());
    Ok(())
}

fn judge(args: JudgeArgs) -> anyhow::Result<()> {
    let spec = EndpointSpec::parse(&args.judge)?;
    let pairs = read_pairs(&args.a, &args.b)?;
    let out = match &args.out {
        Some(o) => o.clone(),
        None => args
            .a
            .parent()
            .map(|p| p.join("judge"))
            .context("--a has no parent directory; pass --out")?,
    };
    crate::prepare_cmd::check_requests(args.concurrency, args.rate_limit)?;
    if !(args.temperature.is_finite() && (0.0..=2.0).contains(&args.temperature)) {
        bail!(
            "--temperature {}: must be a number in [0, 2]",
            args.temperature
        );
    }
    claim_out(&out, args.force)?;
    let client = ChatClient::new(
        spec.clone(),
        ClientOptions::from_env(&args.api_key_env, args.rate_limit),
    );
    let ask = |system: &str, user: &str| {
        client.chat(
            &[ChatMessage::system(system), ChatMessage::user(user)],
            args.temperature,
            Some(300),
        )
    };
    let progress = bar(pairs.len(), "judge");
    let results = map_concurrent(
        &pairs,
        args.concurrency,
        |pair| judge_pair(pair, args.retries, &ask),
        |_| progress.inc(1),
    );
    progress.finish_and_clear();
    let items = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let (per_language, overall) = win_rates(&items);
    let results = EvalResults::Judge {
        a: args.a.clone(),
        b: args.b.clone(),
        judge: spec.to_spec(),
        config: json!({
            "prompt": "paper appendix C (AlpacaEval ranking), language clause for non-English",
            "orders": "both (A as model m, then B as model m)",
            "retries": args.retries,
            "temperature": args.temperature,
            "scoring": "per pair: mean over orders of 1 (A first) / 0 (B first) / 0.5 (invalid)",
        }),
        per_language: per_language.clone(),
        overall: overall.clone(),
    };
    write_jsonl(&out.join("responses.jsonl"), &items)?;
    results.write(&out.join("results.json"))?;
    println!(
        "{:<8} {:>5} {:>5} {:>5} {:>6} {:>8} {:>8} {:>8}",
        "lang", "n", "wins", "ties", "losses", "invalid", "win_rate", "stderr"
    );
    for (lang, w) in per_language.iter().chain([(&"all".to_string(), &overall)]) {
        println!(
            "{lang:<8} {:>5} {:>5} {:>5} {:>6} {:>8} {:>8.4} {:>8.4}",
            w.n, w.wins, w.ties, w.losses, w.invalid_judgements, w.win_rate, w.stderr
        );
    }
    println!("results: {}", out.join("results.json").display());
    Ok(())
}

fn mc(args: McArgs) -> anyhow::Result<()> {
    clo_core::limits::SCORE_BATCH.check_as("--batch-size", "clo eval", args.batch_size)?;
    claim_out(&args.out, args.force)?;
    let records = read_mc_tasks(&args.tasks)?;
    let device = parse_device(&args.device)?;
    let lm = Pretrained::load(&args.model, &device)?;
    let progress = bar(records.len(), "mc");
    let items = eval_mc(
        &lm,
        &records,
        args.chat_template,
        args.batch_size,
        &mut |n| progress.inc(n as u64),
    )?;
    progress.finish_and_clear();
    let (per_language, overall) = mc_accuracy(&items);
    let results = EvalResults::Mc {
        model: ModelRef {
            dir: args.model.clone(),
            weights_sha256: weights_digest(&lm.model),
        },
        config: json!({"tasks": args.tasks, "chat_template": args.chat_template, "scoring": "log p(\" \" + label | prompt), argmax"}),
        per_language: per_language.clone(),
        overall,
    };
    write_jsonl(&args.out.join("responses.jsonl"), &items)?;
    results.write(&args.out.join("results.json"))?;
    println!("{:<6} {:>5} {:>9} {:>8}", "lang", "n", "accuracy", "stderr");
    for (lang, a) in per_language.iter().chain([(&"all".to_string(), &overall)]) {
        println!("{lang:<6} {:>5} {:>9.4} {:>8.4}", a.n, a.accuracy, a.stderr);
    }
    println!("results: {}", args.out.join("results.json").display());
    Ok(())
}
