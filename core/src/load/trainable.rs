//! Which parameters train (method.md section 5), applied from outside the model by module-path
//! patterns: the model code has no `if lora` branches.

use burn::module::{Lora, Module, ParamGroup};
use serde::{Deserialize, Serialize};

use crate::error::{CoreError, Result};
use crate::load::models::CausalLm;

/// Module names LoRA may adapt, as in PEFT's `target_modules`.
pub const LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The trainable set of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Trainable {
    /// The q, k, v, o projections of layers `[from, to)` (all layers when `None`).
    Attention { layers: Option<[usize; 2]> },
    /// Low-rank adapters (scale `alpha / rank`) on `targets`; the base stays frozen.
    Lora {
        rank: usize,
        alpha: f64,
        targets: Vec<String>,
    },
    /// Every parameter.
    Full,
}

impl Default for Trainable {
    /// The paper's default: attention only.
    fn default() -> Self {
        Trainable::Attention { layers: None }
    }
}

/// Regex alternation of layer indices `[from, to)`, or any index.
fn layer_pattern(layers: Option<[usize; 2]>, num_layers: usize) -> Result<String> {
    match layers {
        None => Ok(r"\d+".into()),
        Some([from, to]) if from < to && to <= num_layers => Ok(format!(
            "({})",
            (from..to)
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("|")
        )),
        Some([from, to]) => Err(CoreError::Invalid(format!(
            "attention layers [{from}, {to}) do not fit the model's {num_layers} layers; use 0 <= from < to <= {num_layers}"
        ))),
    }
}

fn group(pattern: &str) -> Result<ParamGroup> {
    ParamGroup::from_regex(pattern)
        .map_err(|e| CoreError::Invalid(format!("parameter pattern {pattern}: {e:?}")))
}

impl Trainable {
    /// Freezes what does not train; with LoRA, adds the adapters.
    pub fn apply(&self, model: CausalLm) -> Result<CausalLm> {
        let num_layers = model.model.layers.len();
        match self {
            Trainable::Full => Ok(model.unfreeze()),
            Trainable::Attention { layers } => {
                let layers = layer_pattern(*layers, num_layers)?;
                let pattern = format!(
                    r"^model\.layers\.{layers}\.self_attn\.(q_proj|k_proj|v_proj|o_proj)\."
                );
                Ok(model.freeze().unfreeze_group(group(&pattern)?))
            }
            Trainable::Lora {
                rank,
                alpha,
                targets,
            } => {
                if *rank == 0 {
                    return Err(CoreError::Invalid(
                        "the `lora_rank` setting must be at least 1".into(),
                    ));
                }
                if let Some(bad) = targets.iter().find(|t| !LORA_TARGETS.contains(&t.as_str())) {
                    return Err(CoreError::Invalid(format!(
                        "LoRA target `{bad}` is not a module of this model; choose from {}",
                        LORA_TARGETS.join(", ")
                    )));
                }
                let pattern = format!(
                    r"^model\.layers\.\d+\.(self_attn|mlp)\.({})\.weight$",
                    targets.join("|")
                );
                Ok(model
                    .freeze()
                    .apply_lora(Lora::new(*rank, *alpha).set_param_group(group(&pattern)?)))
            }
        }
    }
}

/// Which parameters train, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrainableKind {
    #[default]
    Attention,
    Lora,
    Full,
}

impl TrainableKind {
    /// Every trainable set's name, as the command line, the API and the web form take it.
    pub const NAMES: [&str; 3] = ["attention", "lora", "full"];

    /// The name the command line takes.
    pub fn name(self) -> &'static str {
        match self {
            TrainableKind::Attention => "attention",
            TrainableKind::Lora => "lora",
            TrainableKind::Full => "full",
        }
    }
}

impl std::str::FromStr for TrainableKind {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "attention" => Ok(TrainableKind::Attention),
            "lora" => Ok(TrainableKind::Lora),
            "full" => Ok(TrainableKind::Full),
            _ => Err(CoreError::Invalid(format!(
                "unknown trainable set `{s}`; choose attention, lora or full"
            ))),
        }
    }
}
