//! `clo quickstart`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clo_core::toy::quickstart::{QuickProgress, QuickstartConfig, quickstart, table};
use clo_core::toy::shipped::write_shipped_model;
use clo_core::toy::study::{StudyConfig, study, study_tables};
use clo_core::toy::world::Lang;
use clo_core::train::Method;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::device::{DEVICE_HELP, parse_device};
use crate::train_cmd::TrainBar;

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Output directory (report.md, results.json, runs/, data/); rerun to resume. Default:
    /// clo-quickstart, or clo-study with --study.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A toy model from `clo pretrain` (default: the model shipped in clo, written to
    /// OUT/base-model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Run the whole study instead: the three toy languages, sizes 200..3200, 3 seeds, every
    /// baseline, learning rate (and beta) tuned per method and language on validation
    /// questions; about 2 hours on 2 cores. Resumable.
    #[arg(long)]
    study: bool,
    /// Target language(s): vel (high resource), toy (medium), zir (low). Default: toy; with
    /// --study, all three.
    #[arg(long, value_delimiter = ',')]
    lang: Vec<Lang>,
    /// Training quadruples per run; several make a data-size curve (default 800; with --study
    /// 200,400,800,1600,3200).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Seeds of data and training; the table averages over them (default 0; with --study
    /// 0,1,2).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Methods to compare (any of clo, sft, sft-eng, sft-tgt, dpo, sft+dpo; default sft,clo).
    /// With --study: the methods trained at every size.
    #[arg(long, value_delimiter = ',')]
    methods: Vec<Method>,
    /// Passes over the quadruples (default 1, as in the paper).
    #[arg(long)]
    epochs: Option<usize>,
    /// Peak learning rate of every method (default: each method's tuned rate). With --study:
    /// the grid tried, comma-separated.
    #[arg(long, value_delimiter = ',')]
    lr: Vec<f64>,
    /// With --study: the betas tried for clo and dpo (default 0.1,0.3,1).
    #[arg(long, value_delimiter = ',')]
    beta: Vec<f64>,
    /// With --study: the DPO-Positive weights tried for the `clo+dpop` remedy (default 5,50;
    /// 0 leaves the remedy out).
    #[arg(long, value_delimiter = ',')]
    dpop: Vec<f64>,
    /// With --study: the NLL weights (lambda) tried for the `clo+nll` remedy (default 0.8,0.95;
    /// 0 leaves the remedy out).
    #[arg(long, value_delimiter = ',')]
    nll_lambda: Vec<f64>,
    /// With --study: the methods trained at one size only (default sft-eng,sft-tgt,dpo,sft+dpo;
    /// `none` for none).
    #[arg(long)]
    baselines: Option<String>,
    /// With --study: the size of the baselines' runs (default 800).
    #[arg(long)]
    baseline_size: Option<usize>,
    /// With --study: the size of the tuning runs (default 800).
    #[arg(long)]
    tune_size: Option<usize>,
    /// Held-out questions per kind of question.
    #[arg(long)]
    per_kind: Option<usize>,
    #[arg(long, default_value = "cpu", help = DEVICE_HELP)]
    device: String,
}

/// The progress bars of a quickstart or a study.
fn reporter() -> impl FnMut(QuickProgress) {
    let mut train_bar = TrainBar::new(false);
    let eval_bar = ProgressBar::hidden();
    move |p: QuickProgress| match p {
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
    }
}

fn run_study(args: QuickstartArgs, base: PathBuf, out: PathBuf) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let mut config = StudyConfig::default();
    if !args.lang.is_empty() {
        config.langs = args.lang.clone();
    }
    if !args.sizes.is_empty() {
        config.sizes = args.sizes.clone();
    }
    if !args.seeds.is_empty() {
        config.seeds = args.seeds.clone();
    }
    if !args.methods.is_empty() {
        config.main_methods = args.methods.clone();
    }
    if !args.lr.is_empty() {
        config.lr_grid = args.lr.clone();
    }
    if !args.beta.is_empty() {
        config.beta_grid = args.beta.clone();
    }
    if !args.dpop.is_empty() {
        config.dpop_grid = args.dpop.iter().copied().filter(|d| *d > 0.0).collect();
    }
    if !args.nll_lambda.is_empty() {
        config.nll_lambda_grid = args
            .nll_lambda
            .iter()
            .copied()
            .filter(|l| *l > 0.0)
            .collect();
    }
    if let Some(list) = &args.baselines {
        config.baselines = list
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty() && *m != "none")
            .map(|m| {
                m.parse::<Method>()
                    .map_err(|e| anyhow::anyhow!("--baselines: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(n) = args.baseline_size {
        config.baseline_size = n;
    }
    if let Some(n) = args.tune_size {
        config.tune_size = n;
    }
    if let Some(e) = args.epochs {
        config.epochs = e;
    }
    if let Some(k) = args.per_kind {
        config.per_kind = k;
    }
    let results = study(&base, &out, &config, &device, &mut reporter())
        .with_context(|| format!("study in {}", out.display()))?;
    println!("{}", study_tables(&results));
    println!(
        "wall time {:.0} s; report: {}",
        results.wall_s,
        out.join("report.md").display()
    );
    Ok(())
}

pub fn run_quickstart(args: QuickstartArgs) -> anyhow::Result<()> {
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.study {
            "clo-study"
        } else {
            "clo-quickstart"
        })
    });
    let base = match &args.model {
        Some(dir) => dir.clone(),
        None => {
            let dir = out.join("base-model");
            write_shipped_model(&dir)
                .with_context(|| format!("writing the shipped toy model to {}", dir.display()))?;
            dir
        }
    };
    if args.study {
        return run_study(args, base, out);
    }
    anyhow::ensure!(
        args.beta.is_empty()
            && args.dpop.is_empty()
            && args.nll_lambda.is_empty()
            && args.baselines.is_none()
            && args.baseline_size.is_none()
            && args.tune_size.is_none(),
        "--beta, --dpop, --nll-lambda, --baselines, --baseline-size and --tune-size are settings of the study: add --study"
    );
    let device = parse_device(&args.device)?;
    let mut config = QuickstartConfig::default();
    match args.lang.as_slice() {
        [] => {}
        [one] => config.lang = *one,
        _ => anyhow::bail!("--lang: the quickstart trains one language (several need --study)"),
    }
    if !args.sizes.is_empty() {
        config.sizes = args.sizes.clone();
    }
    if !args.seeds.is_empty() {
        config.seeds = args.seeds.clone();
    }
    if !args.methods.is_empty() {
        config.methods = args.methods.clone();
    }
    if let Some(e) = args.epochs {
        config.epochs = e;
    }
    match args.lr.as_slice() {
        [] => {}
        [lr] => {
            config.lr = *lr;
            config.tuned.clear();
        }
        _ => anyhow::bail!("--lr: one learning rate (a grid needs --study)"),
    }
    if let Some(k) = args.per_kind {
        config.per_kind = k;
    }
    let results = quickstart(&base, &out, &config, &device, &mut reporter())
        .with_context(|| format!("quickstart in {}", out.display()))?;
    println!("{}", table(&results));
    println!(
        "{} held-out questions per language; wall time {:.0} s",
        results.questions, results.wall_s
    );
    println!("report: {}", out.join("report.md").display());
    Ok(())
}
