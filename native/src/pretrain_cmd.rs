//! `clo pretrain`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clo_core::pretrain::{PretrainConfig, PretrainProgress, PretrainTarget, pretrain, read_corpus};
use clo_core::toy::data::{CorpusConfig, pretrain_corpus};
use clo_core::toy::world::{Lang, World};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::device::{DEVICE_HELP, parse_device};

/// Settings of `clo pretrain`; defaults are those of the shipped toy model.
#[derive(Args, Debug)]
pub struct PretrainArgs {
    /// Model directory to write (Hugging Face layout); work in progress goes to OUT.work/.
    #[arg(long)]
    out: PathBuf,
    /// JSONL corpus of {"text"} or {"prompt", "response"} lines. Without it, the toy world's
    /// English-centric corpus is generated (and the world is saved as OUT/toy_world.json).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Seed of the toy world's facts.
    #[arg(long, default_value_t = 0)]
    world_seed: u64,
    /// Documents of the generated corpus.
    #[arg(long, default_value_t = 24_000)]
    documents: usize,
    /// Share of generated documents in the `toy` language (medium resource; default 0.04).
    #[arg(long)]
    target_share: Option<f64>,
    /// Shares of generated documents per toy language, e.g. `vel=0.2,toy=0.04,zir=0.005`
    /// (the default); English has the rest.
    #[arg(long, value_delimiter = ',', value_parser = parse_share)]
    shares: Vec<(Lang, f64)>,
    #[arg(long)]
    vocab_size: Option<usize>,
    #[arg(long)]
    hidden_size: Option<usize>,
    #[arg(long)]
    intermediate_size: Option<usize>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Longest training sequence in tokens.
    #[arg(long)]
    max_len: Option<usize>,
    #[arg(long)]
    steps: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (warmup, then cosine decay to --min-lr).
    #[arg(long)]
    lr: Option<f64>,
    #[arg(long)]
    min_lr: Option<f64>,
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Seed of initialisation and data order.
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
    /// Continue from the checkpoint in OUT.work/.
    #[arg(long)]
    resume: bool,
}

/// `LANG=SHARE`, e.g. `zir=0.005`.
fn parse_share(s: &str) -> Result<(Lang, f64), String> {
    let (lang, share) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: write LANG=SHARE, e.g. zir=0.005"))?;
    let lang: Lang = lang.trim().parse()?;
    if lang == Lang::En {
        return Err(
            "English has the share the toy languages leave; name toy languages only".into(),
        );
    }
    let share: f64 = share
        .trim()
        .parse()
        .map_err(|e| format!("`{s}`: the share is a number ({e})"))?;
    Ok((lang, share))
}

impl PretrainArgs {
    fn config(&self) -> PretrainConfig {
        let mut c = PretrainConfig::default();
        macro_rules! set {
            ($($arg:ident => $field:ident),*) => { $( if let Some(v) = self.$arg { c.$field = v; } )* };
        }
        set!(vocab_size => vocab_size, hidden_size => hidden_size,
            intermediate_size => intermediate_size, layers => num_layers, heads => num_heads,
            kv_heads => num_kv_heads, max_len => max_len, steps => steps,
            batch_size => batch_size, lr => lr, min_lr => min_lr,
            warmup_steps => warmup_steps, seed => seed);
        c
    }
}

pub fn run_pretrain(args: PretrainArgs) -> anyhow::Result<()> {
    let config = args.config();
    let device = parse_device(&args.device)?;
    let command: Vec<String> = std::env::args().collect();
    let mut extra = Vec::new();
    let (docs, corpus) = match &args.corpus {
        Some(path) => (
            read_corpus(path)?,
            json!({ "file": path, "command": command }),
        ),
        None => {
            let world = World::new(args.world_seed);
            let mut c = CorpusConfig {
                world_seed: args.world_seed,
                documents: args.documents,
                ..CorpusConfig::default()
            };
            if !args.shares.is_empty() {
                c.shares = args.shares.iter().copied().collect();
            }
            if let Some(share) = args.target_share {
                c.shares.insert(Lang::Toy, share);
            }
            anyhow::ensure!(
                c.shares.values().all(|s| (0.0..=1.0).contains(s)) && c.english_share() > 0.0,
                "--shares/--target-share: each share is in [0, 1] and together they leave English a share (they sum to {:.3})",
                1.0 - c.english_share()
            );
            extra.push(("toy_world.json", serde_json::to_value(&world)?));
            let docs = pretrain_corpus(&world, &c);
            (docs, json!({ "toy_world": c, "command": command }))
        }
    };
    eprintln!(
        "corpus: {} documents; model: {} parameters",
        docs.len(),
        config.decoder().num_parameters()
    );
    let bar = ProgressBar::new(config.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("pretrain {bar:30} step {pos}/{len} {msg} eta {eta}")
            .expect("valid template"),
    );
    let mut report = |p: PretrainProgress| match p {
        PretrainProgress::Started { step, .. } => bar.set_position(step as u64),
        PretrainProgress::Step(s) => {
            bar.inc(1);
            bar.set_message(format!("loss {:.3}", s.loss));
        }
    };
    let summary = pretrain(
        &docs,
        corpus,
        &config,
        PretrainTarget {
            out: &args.out,
            resume: args.resume,
            extra: &extra,
        },
        &device,
        &mut report,
    )
    .with_context(|| format!("pretraining into {}", args.out.display()))?;
    bar.finish_and_clear();
    println!(
        "pretrained {} parameters in {:.0} s: loss {:.3} -> {:.3}",
        summary.num_parameters, summary.seconds, summary.first_loss, summary.last_loss
    );
    println!("model: {}", args.out.display());
    Ok(())
}
