//! What the run page charts: each chart's lines, read off the `metrics.jsonl` lines that the
//! run's Server-Sent Events carry ([`StepMetrics`]). A line with no value in any step (a term
//! the method does not have) is left out.

use crate::types::StepMetrics;

pub type Getter = fn(&StepMetrics) -> Option<f64>;

pub struct Chart {
    pub id: &'static str,
    pub title: &'static str,
    pub lines: &'static [(&'static str, Getter)],
}

pub const CHARTS: &[Chart] = &[
    Chart {
        id: "loss",
        title: "Loss",
        lines: &[
            ("loss", |m| Some(m.loss)),
            ("NLL term", |m| m.loss_sft),
            ("preference term", |m| m.loss_cl),
            ("validation", |m| m.val_loss),
        ],
    },
    Chart {
        id: "margins",
        title: "Reward margins",
        lines: &[
            ("English prompts", |m| m.margin_en),
            ("target prompts", |m| m.margin_tgt),
        ],
    },
    Chart {
        id: "accuracy",
        title: "Preference accuracy",
        lines: &[
            ("English prompts", |m| m.acc_en),
            ("target prompts", |m| m.acc_tgt),
        ],
    },
    Chart {
        id: "rewards",
        title: "Rewards",
        lines: &[
            ("en chosen", |m| m.reward_en_chosen),
            ("en rejected", |m| m.reward_en_rejected),
            ("tgt chosen", |m| m.reward_tgt_chosen),
            ("tgt rejected", |m| m.reward_tgt_rejected),
        ],
    },
    Chart {
        id: "lr",
        title: "Learning rate",
        lines: &[("lr", |m| Some(m.lr))],
    },
];

/// Lines with a value on some steps only (validation runs every K steps): drawn as markers,
/// since a line needs neighbours.
pub const SPARSE: &[&str] = &["validation"];

/// The chart's lines that have a value in some step.
pub fn present<'a>(chart: &'a Chart, points: &[StepMetrics]) -> Vec<&'a (&'static str, Getter)> {
    chart
        .lines
        .iter()
        .filter(|(_, get)| points.iter().any(|p| get(p).is_some()))
        .collect()
}

/// One `metric` event's data.
pub fn parse_metric(data: &str) -> Result<StepMetrics, String> {
    serde_json::from_str(data).map_err(|e| format!("a metrics line the UI cannot read: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sft_step(step: usize) -> StepMetrics {
        parse_metric(&format!(
            r#"{{"step":{step},"stage":"sft","epoch":0,"loss":2.5,"loss_sft":2.5,"loss_cl":null,
            "reward_en_chosen":null,"reward_en_rejected":null,"reward_tgt_chosen":null,
            "reward_tgt_rejected":null,"margin_en":null,"margin_tgt":null,"acc_en":null,
            "acc_tgt":null,"grad_norm":1.0,"lr":0.001,"tokens_per_s":10.0,"tokens":80,
            "val_loss":null}}"#
        ))
        .unwrap()
    }

    #[test]
    fn lines_a_method_lacks_are_left_out() {
        let points = vec![sft_step(0), sft_step(1)];
        let names =
            |c: &Chart| -> Vec<&str> { present(c, &points).iter().map(|(n, _)| *n).collect() };
        assert_eq!(names(&CHARTS[0]), ["loss", "NLL term"]);
        assert!(names(&CHARTS[1]).is_empty(), "sft has no reward margins");
        assert_eq!(names(&CHARTS[4]), ["lr"]);
    }

    #[test]
    fn a_malformed_metric_is_an_error() {
        assert!(parse_metric("{\"step\": 1}").is_err());
    }
}
