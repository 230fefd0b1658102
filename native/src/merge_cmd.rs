//! `clo merge`: a base and two experts fine-tuned from it (a task expert, a language expert)
//! into one model directory, by layer swapping or task arithmetic, optionally reverting each
//! expert's weak updates first (clo-core's `export::merge`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clo_core::export::merge::{Recipe, merge, parse_layer_ranges};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The model both experts were fine-tuned from (a Hugging Face directory or GGUF file).
    #[arg(long, value_name = "MODEL")]
    base: PathBuf,
    /// The task expert (e.g. trained on English instructions): a run directory (its best
    /// weights, LoRA folded in) or a model directory of the base's architecture.
    #[arg(long, value_name = "A")]
    task: PathBuf,
    /// The language expert (e.g. trained on target-language text): a run or model directory.
    #[arg(long, value_name = "B")]
    language: PathBuf,
    /// Layer swapping: every tensor of the decoder layers in RANGES (e.g. 0-3,28-31) comes from
    /// the language expert, every other tensor from the task expert.
    #[arg(long, value_name = "RANGES")]
    swap_layers: Option<String>,
    /// Reverting weak updates, applied first to each expert and each tensor on its own: the
    /// elements whose |expert - base| is below that tensor's Q-quantile of |expert - base| take
    /// the base's value (0 < Q < 1).
    #[arg(long, value_name = "Q")]
    revert_below: Option<f64>,
    /// Without --swap-layers: task arithmetic, base + WA (task - base) + WB (language - base)
    /// (0.5,0.5 is the plain average).
    #[arg(long, value_name = "WA,WB", value_delimiter = ',', num_args = 1..=2, conflicts_with = "swap_layers")]
    weights: Option<Vec<f64>>,
    /// Output model directory (config.json with the recipe under `clo_merge`, model.safetensors
    /// in f32, the task expert's tokenizer files).
    #[arg(long)]
    out: PathBuf,
    /// Replace an --out that `clo merge` or `clo export` did not write (it is moved aside).
    #[arg(long)]
    force: bool,
}

pub fn run_merge(args: MergeArgs) -> anyhow::Result<()> {
    let recipe = Recipe {
        swap_layers: match &args.swap_layers {
            Some(text) => parse_layer_ranges(text, None)?,
            None => Vec::new(),
        },
        revert_below: args.revert_below,
        weights: match args.weights.as_deref() {
            Some([a, b]) => [*a, *b],
            Some(_) => {
                anyhow::bail!("--weights: give two numbers, WA,WB (the task's, the language's)")
            }
            None => Recipe::default().weights,
        },
    };
    let device = burn::tensor::Device::flex();
    let report = merge(
        &args.base,
        &args.task,
        &args.language,
        &recipe,
        &args.out,
        &device,
        args.force,
    )
    .with_context(|| format!("clo merge into {}", args.out.display()))?;
    let how = if recipe.swap_layers.is_empty() {
        format!(
            "task arithmetic with weights {}, {}",
            recipe.weights[0], recipe.weights[1]
        )
    } else {
        format!(
            "{} of {} tensors from the language expert (layers {})",
            report.swapped,
            report.tensors,
            args.swap_layers.as_deref().unwrap_or("")
        )
    };
    println!("merged: {how}");
    if let Some(q) = recipe.revert_below {
        println!(
            "reverted below the {q} quantile: {:.1}% of the task expert's elements, {:.1}% of the language expert's",
            100.0 * report.reverted[0],
            100.0 * report.reverted[1]
        );
    }
    println!("model: {}", args.out.display());
    Ok(())
}
