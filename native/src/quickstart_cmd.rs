//! `clo quickstart`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clo_core::toy::quickstart::{QuickProgress, QuickstartConfig, quickstart, table};
use clo_core::toy::shipped::write_shipped_model;
use clo_core::train::Method;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::device::{DEVICE_HELP, parse_device};
use crate::train_cmd::TrainBar;

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Output directory (report.md, results.json, runs/, data/); rerun to resume.
    #[arg(long, default_value = "clo-quickstart")]
    out: PathBuf,
    /// A toy model from `clo pretrain` (default: the model shipped in clo, written to
    /// OUT/base-model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training quadruples per run; several make a data-size curve (e.g. 200,400,800,1600,3200).
    #[arg(long, value_delimiter = ',', default_value = "800")]
    sizes: Vec<usize>,
    /// Seeds of data and training; the table averages over them.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    /// Methods to compare (any of clo, sft, sft-eng, sft-tgt, dpo, sft+dpo).
    #[arg(long, value_delimiter = ',', default_value = "sft,clo")]
    methods: Vec<Method>,
    /// Passes over the quadruples.
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Held-out questions per kind of question.
    #[arg(long)]
    per_kind: Option<usize>,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
}

pub fn run_quickstart(args: QuickstartArgs) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let mut config = QuickstartConfig {
        sizes: args.sizes.clone(),
        seeds: args.seeds.clone(),
        methods: args.methods.clone(),
        ..QuickstartConfig::default()
    };
    if let Some(e) = args.epochs {
        config.epochs = e;
    }
    if let Some(lr) = args.lr {
        config.lr = lr;
    }
    if let Some(k) = args.per_kind {
        config.per_kind = k;
    }
    let base = match &args.model {
        Some(dir) => dir.clone(),
        None => {
            let dir = args.out.join("base-model");
            write_shipped_model(&dir)
                .with_context(|| format!("writing the shipped toy model to {}", dir.display()))?;
            dir
        }
    };
    let mut train_bar = TrainBar::new(false);
    let eval_bar = ProgressBar::hidden();
    let mut report = |p: QuickProgress| match p {
        QuickProgress::Phase { what } => {
            train_bar.bar.finish_and_clear();
            train_bar = TrainBar::new(false);
            eval_bar.finish_and_clear();
            eval_bar.set_draw_target(ProgressDrawTarget::hidden());
            eval_bar.reset();
            eprintln!("{what}");
        }
        QuickProgress::Train(p) => train_bar.update(p),
        QuickProgress::Eval { done, total } => {
            if eval_bar.is_hidden() {
                eval_bar.set_draw_target(ProgressDrawTarget::stderr());
                eval_bar.set_style(
                    ProgressStyle::with_template(
                        "  answering {bar:30} {pos}/{len} prompts eta {eta}",
                    )
                    .expect("valid template"),
                );
                eval_bar.set_length(total as u64);
            }
            eval_bar.set_position(done as u64);
        }
    };
    let results = quickstart(&base, &args.out, &config, &device, &mut report)
        .with_context(|| format!("quickstart in {}", args.out.display()))?;
    train_bar.bar.finish_and_clear();
    eval_bar.finish_and_clear();
    println!("{}", table(&results));
    println!(
        "{} held-out questions per language; wall time {:.0} s",
        results.questions, results.wall_s
    );
    println!("report: {}", args.out.join("report.md").display());
    Ok(())
}
