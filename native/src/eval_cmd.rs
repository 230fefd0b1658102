//! `clo eval`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use clo_core::Pretrained;
use clo_core::eval::mc::{eval_mc, mc_accuracy, read_mc_tasks};
use clo_core::fsutil::{write_atomically, write_json_atomically};
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
    }
}

fn mc(args: McArgs) -> anyhow::Result<()> {
    let records = read_mc_tasks(&args.tasks)?;
    let device = parse_device(&args.device)?;
    let lm = Pretrained::load(&args.model, &device)?;
    let bar = ProgressBar::new(records.len() as u64).with_style(
        ProgressStyle::with_template("mc {bar:30} {pos}/{len} records {per_sec} eta {eta}")
            .expect("valid template"),
    );
    let items = eval_mc(
        &lm.model,
        &lm.config.decoder.rope,
        &lm.tokenizer,
        &records,
        args.chat_template,
        args.batch_size,
        &device,
        &mut |n| bar.inc(n as u64),
    )?;
    bar.finish_and_clear();
    let (per_language, overall) = mc_accuracy(&items);
    let results = json!({
        "task": "mc",
        "model": {"dir": args.model, "weights_sha256": weights_digest(&lm.model)},
        "config": {"tasks": args.tasks, "chat_template": args.chat_template, "scoring": "log p(\" \" + label | prompt), argmax"},
        "per_language": per_language,
        "overall": overall,
    });
    let mut lines = String::new();
    for item in &items {
        lines.push_str(&serde_json::to_string(item)?);
        lines.push('\n');
    }
    write_atomically(&args.out.join("responses.jsonl"), lines.as_bytes())?;
    write_json_atomically(&args.out.join("results.json"), &results)?;
    println!("{:<6} {:>5} {:>9} {:>8}", "lang", "n", "accuracy", "stderr");
    for (lang, a) in per_language.iter().chain([(&"all".to_string(), &overall)]) {
        println!("{lang:<6} {:>5} {:>9.4} {:>8.4}", a.n, a.accuracy, a.stderr);
    }
    println!("results: {}", args.out.join("results.json").display());
    Ok(())
}
