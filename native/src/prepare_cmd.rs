//! `clo prepare`.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use clo_core::eval::langid::{LanguageIdentifier, Lingua};
use clo_core::openai::{ChatClient, ClientOptions, EndpointSpec};
use clo_core::prepare::{
    Checks, Columns, Format, OpenAiTranslator, PrepareConfig, Translator, Workers, ingest,
    journal_path, prepare, sibling,
};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args, Debug)]
pub struct PrepareArgs {
    /// English SFT data: OASST export, Alpaca JSON/JSONL, ShareGPT/messages JSONL or
    /// {"prompt", "response"} JSONL.
    #[arg(long)]
    input: PathBuf,
    /// auto, oasst, alpaca, sharegpt or pairs.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Target language (ISO 639-1 code, e.g. sw).
    #[arg(long)]
    target: String,
    /// openai:BASE_URL#MODEL (an OpenAI-compatible chat endpoint), columns (the input already
    /// has x_tgt/y_tgt or prompt_<lang>/response_<lang>), or model:DIR (a local seq2seq model).
    #[arg(long)]
    translator: String,
    /// Quadruple JSONL to write (with OUT.train/val/subset-N.jsonl, OUT.summary.json,
    /// OUT.rejected.jsonl and the journal OUT.journal.jsonl beside it).
    #[arg(long)]
    out: PathBuf,
    /// Keep the first N pairs after selection (the paper: 6400).
    #[arg(long)]
    limit: Option<usize>,
    /// Nested subsets of the train split, e.g. 200,400,800,1600,3200,6400.
    #[arg(long, value_delimiter = ',')]
    subsets: Vec<usize>,
    /// Translation requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Requests per second, 0 for no limit.
    #[arg(long, default_value_t = 0.0)]
    rate_limit: f64,
    /// Environment variable with the endpoint's API key (bearer), if set.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// Share of quadruples held out in OUT.val.jsonl (by a hash of the source id).
    #[arg(long, default_value_t = 0.05)]
    val_fraction: f64,
    /// Seed of the subsets' order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Skip malformed lines and records (counted in the summary) instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// Print the first records and the counts; translate and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Source language of the input.
    #[arg(long, default_value = "en")]
    source: String,
    /// Replace an OUT that clo prepare did not write (it is moved aside, not deleted).
    #[arg(long)]
    force: bool,
}

fn translator(args: &PrepareArgs) -> anyhow::Result<Box<dyn Translator>> {
    let spec = args.translator.as_str();
    if spec == "columns" {
        return Ok(Box::new(Columns));
    }
    if spec.starts_with("openai:") {
        let client = ChatClient::new(
            EndpointSpec::parse(spec)?,
            ClientOptions::from_env(&args.api_key_env, args.rate_limit),
        );
        return Ok(Box::new(OpenAiTranslator { client }));
    }
    if spec.starts_with("model:") {
        bail!(
            "--translator {spec}: local seq2seq translators (M2M100, NLLB) are not available yet. Serve the translation model behind an OpenAI-compatible endpoint (vLLM, llama.cpp server) and pass openai:BASE_URL#MODEL, or give the translations in the input and pass columns"
        );
    }
    bail!("--translator {spec}: expected openai:BASE_URL#MODEL, columns or model:DIR")
}

/// The settings of requests to an endpoint (translator, judge): at least one in flight, a
/// rate of 0 (no limit) or more.
pub fn check_requests(concurrency: usize, rate_limit: f64) -> anyhow::Result<()> {
    if concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if !(rate_limit >= 0.0 && rate_limit.is_finite()) {
        bail!("--rate-limit {rate_limit}: must be >= 0 (0 is no limit)");
    }
    Ok(())
}

pub fn run_prepare(args: PrepareArgs) -> anyhow::Result<()> {
    let format: Format = args.format.parse()?;
    if !(0.0..1.0).contains(&args.val_fraction) {
        bail!("--val-fraction {} must be in [0, 1)", args.val_fraction);
    }
    check_requests(args.concurrency, args.rate_limit)?;
    if args.limit == Some(0) || args.subsets.contains(&0) {
        bail!("--limit and --subsets sizes must be at least 1");
    }
    let translator = translator(&args)?;
    if !args.dry_run {
        // Before any translation: OUT is this command's own earlier output (its summary or
        // journal is beside it) or nothing; never a run directory's file.
        clo_core::fsutil::refuse_run_dir_output(&args.out, None)?;
        let ours = |out: &std::path::Path| {
            out.is_file() && (sibling(out, "summary.json").is_file() || journal_path(out).is_file())
        };
        if let clo_core::fsutil::Claim::MovedAside(old) =
            clo_core::fsutil::claim_output(&args.out, "clo prepare", args.force, ours)?
        {
            eprintln!(
                "--force: the old {} was moved to {}",
                args.out.display(),
                old.display()
            );
        }
    }
    let (mut pairs, stats) = ingest(&args.input, format, &args.target, args.skip_bad)?;
    if let Some(n) = args.limit {
        pairs.truncate(n);
    }
    if args.dry_run {
        for p in pairs.iter().take(3) {
            println!("{}", serde_json::to_string_pretty(p)?);
        }
        println!("{}", serde_json::to_string_pretty(&stats)?);
        println!(
            "selected: {} pairs to translate with {}",
            pairs.len(),
            translator.spec()
        );
        return Ok(());
    }
    let langid = match Lingua::new(&[args.source.as_str(), args.target.as_str()]) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!("no language check: {e}");
            None
        }
    };
    let config = PrepareConfig {
        input: args.input.clone(),
        format,
        src_lang: args.source.clone(),
        tgt_lang: args.target.clone(),
        translator: translator.spec(),
        limit: args.limit,
        subsets: args.subsets.clone(),
        val_fraction: args.val_fraction,
        seed: args.seed,
        checks: Checks::default(),
        skip_bad: args.skip_bad,
    };
    let bar = ProgressBar::new(pairs.len() as u64).with_style(
        ProgressStyle::with_template("prepare {bar:30} {pos}/{len} records {per_sec} eta {eta}")
            .expect("valid template"),
    );
    let workers = Workers {
        translator: translator.as_ref(),
        langid: langid.as_ref().map(|l| l as &dyn LanguageIdentifier),
        concurrency: args.concurrency,
    };
    let summary = prepare(&args.out, &config, (&pairs, stats), workers, &|n| {
        bar.inc(n as u64)
    });
    bar.finish_and_clear();
    let summary = summary.map_err(|e| {
        anyhow::anyhow!(
            "{e}\nFinished records are kept in {}; run the same command again to continue.",
            journal_path(&args.out).display()
        )
    })?;
    println!(
        "{} pairs: {} kept ({} train, {} val), {} rejected {:?}; {} translated now",
        summary.selected,
        summary.kept,
        summary.train,
        summary.val,
        summary.rejected,
        summary.rejected_by,
        summary.translated_now
    );
    println!("quadruples: {}", args.out.display());
    println!("summary: {}", sibling(&args.out, "summary.json").display());
    Ok(())
}
