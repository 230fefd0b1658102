//! The printed and JSON report of a benchmark, with the ratios against PyTorch.

use super::*;

fn gib(bytes: Option<u64>) -> String {
    bytes.map_or("?".into(), |b| {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    })
}

/// What a benchmark measured, for [`finish`] to print: the report's first line, the machine,
/// the work's FLOPs, the machine's peak FLOP/s (and where it came from), and both sides.
pub(super) struct Report<'a> {
    pub(super) head: String,
    pub(super) common: &'a Common,
    pub(super) machine: &'a Machine,
    pub(super) flops: f64,
    pub(super) peak: (Option<f64>, String),
    pub(super) clo: Side,
    pub(super) torch: Option<Side>,
}

pub(super) fn finish(value: &mut Value, report: Report<'_>) -> Printed {
    let Report {
        head,
        common,
        machine,
        flops,
        peak: (peak, peak_source),
        clo,
        torch,
    } = report;
    value["dtype"] = json!(common.dtype);
    value["device"] = json!(common.device);
    value["machine"] = json!(machine);
    value["flops_per_step"] = json!(flops);
    value["peak_flops"] = json!(peak);
    value["peak_flops_source"] = json!(peak_source);
    value["warmup"] = json!(common.warmup);
    value["steps"] = json!(common.steps);
    let mut text = format!(
        "{head}\nmachine: {}, {} logical CPUs",
        machine.cpu, machine.logical_cpus
    );
    if let Some(a) = &machine.adapter {
        text += &format!(", adapter {a}");
    }
    text += &format!(
        "\npeak FLOP/s: {}\n",
        match peak {
            Some(p) => format!("{:.1} GFLOP/s ({peak_source})", p / 1e9),
            None => peak_source.clone(),
        }
    );
    let line = |name: &str, s: &Side| {
        let mut l = format!(
            "{name:<8} median step {:.4} s  {:.1} tokens/s  peak memory {} ({})",
            s.median_step_s,
            s.tokens_per_s,
            gib(s.peak_memory_bytes),
            s.memory_kind
        );
        if let Some(m) = s.mfu {
            l += &format!("  MFU {:.1}%", m * 100.0);
        }
        if let Some(loss) = s.losses.first() {
            l += &format!("  step-0 loss {loss:.6}");
        }
        l += &format!("  [{}]", s.device_name);
        if let Some(v) = &s.versions {
            l += &format!(" [{v}]");
        }
        l + "\n"
    };
    text += &line("clo", &clo);
    if let Some(t) = &torch {
        text += &line("pytorch", t);
        let speed = clo.tokens_per_s / t.tokens_per_s;
        let memory = match (clo.peak_memory_bytes, t.peak_memory_bytes) {
            (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
            _ => None,
        };
        let loss_diff = match (clo.losses.first(), t.losses.first()) {
            (Some(a), Some(b)) => Some((a - b).abs()),
            _ => None,
        };
        text += &format!("ratio    clo/pytorch tokens/s {speed:.2}x");
        if let Some(m) = memory {
            text += &format!(", peak memory {m:.2}x");
        }
        text += "\n";
        value["ratio"] = json!({
            "tokens_per_s": speed,
            "peak_memory": memory,
            "step0_loss_abs_diff": loss_diff,
        });
    }
    value["clo"] = json!(clo);
    value["torch"] = json!(torch);
    Printed {
        json: common.json,
        value: value.clone(),
        text,
    }
}
