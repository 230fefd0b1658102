//! The study's tables (Markdown) and `report.md` with its figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{CLO_DPOP, CLO_NLL, StudyResults, StudyRow, choose};
use crate::eval::charts::line_chart;
use crate::eval::report::Estimate;

fn cell(e: &Estimate) -> String {
    if e.value.is_nan() {
        return "–".into();
    }
    format!("{:.3} ± {:.3}", e.value, e.stderr)
}

/// The study's tables (Markdown).
pub fn study_tables(r: &StudyResults) -> String {
    let mut s = String::new();
    s.push_str("### The base model before adaptation (test questions)\n\n| language | tier | accuracy | answered in its language | answered in English |\n|---|---|---|---|---|\n");
    for (l, e) in &r.english_centric {
        let _ = writeln!(
            s,
            "| {l} | {} | {:.3} | {:.3} | {:.3} |",
            l.tier(),
            e.accuracy,
            e.fidelity,
            e.answered_in_english
        );
    }
    s.push_str("\n### Tuned settings (chosen on the validation questions)\n\n| language | method | lr | beta | dpop | lambda | validation score |\n|---|---|---|---|---|---|---|\n");
    for (l, methods) in &r.tuning {
        for (m, t) in methods {
            let score = choose(&t.trials).map_or(f64::NAN, |b| b.validation_score);
            let _ = writeln!(
                s,
                "| {l} | {m} | {} | {} | {} | {} | {score:.3} |",
                t.setting.lr,
                t.setting.beta,
                t.setting.dpop,
                t.setting.lambda.unwrap_or(r.config.lambda)
            );
        }
    }
    for &lang in &r.config.langs {
        let _ = writeln!(
            s,
            "\n### `{lang}` ({} resource)\n\n| system | size | seeds | {lang} right & in {lang} | {lang} fidelity | {lang} accuracy | {lang} answer of the asked kind | en accuracy | win rate vs sft@{} |\n|---|---|---|---|---|---|---|---|---|",
            lang.tier(),
            r.config.sizes.iter().max().copied().unwrap_or(0),
        );
        for row in r.rows.iter().filter(|x| x.lang == lang) {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.method,
                row.size.map_or("–".into(), |n| n.to_string()),
                row.seeds,
                cell(&row.tgt_correct_in_language),
                cell(&row.tgt_fidelity),
                cell(&row.tgt_accuracy),
                cell(&row.tgt_right_kind),
                cell(&row.en_accuracy),
                row.win_rate.as_ref().map_or("–".into(), cell),
            );
        }
    }
    s.push_str("\n### Rewards at the end of training (preference methods; mean over the last tenth of the steps and over seeds)\n\n| language | method | size | en: chosen (y_en) | en: rejected (y_tgt) | target: chosen (y_tgt) | target: rejected (y_en) |\n|---|---|---|---|---|---|---|\n");
    for row in &r.rows {
        if let Some([a, b, c, d]) = row.rewards {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {a:.3} | {b:.3} | {c:.3} | {d:.3} |",
                row.lang,
                row.method,
                row.size.map_or("–".into(), |n| n.to_string())
            );
        }
    }
    s.push_str("\n### Verdicts\n\n| language | CLO beats SFT (right & in language, and fidelity) at sizes | English accuracy within 0.02 of the base at every size |\n|---|---|---|\n");
    for v in &r.verdicts {
        let _ = writeln!(
            s,
            "| {} | {:?}: {} | {} |",
            v.lang,
            v.sizes,
            if v.clo_beats_sft { "yes" } else { "no" },
            if v.english_kept { "yes" } else { "no" }
        );
    }
    s
}

/// `report.md` and its figures.
pub fn render_study(r: &StudyResults) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let c = &r.config;
    let mut md =
        String::from("# clo quickstart --study: CLO against SFT on three toy languages\n\n");
    let _ = writeln!(
        md,
        "Base model `{}`. Every run trains its attention projections for {} epoch(s) (batch {}, lambda {}) and keeps its checkpoint with the lowest validation loss. Learning rates {:?} (and beta {:?} for {}) were tuned per method and language at {} quadruples (seed {}) on {} validation questions; {} test questions, never overlapping them, give every number below. Sizes {:?}, seeds {:?}; baselines at {}. Wall time {:.0} s.\n",
        r.base_model.display(),
        c.epochs,
        c.batch_size,
        c.lambda,
        c.lr_grid,
        c.beta_grid,
        c.beta_methods
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", "),
        c.tune_size,
        c.tune_seed,
        r.validation_questions,
        r.test_questions,
        c.sizes,
        c.seeds,
        c.baseline_size,
        r.wall_s
    );
    md.push_str(&study_tables(r));
    md.push_str("\n## Figures\n\n");
    type Pick = fn(&StudyRow) -> Option<Estimate>;
    let charts: [(&str, &str, Pick); 5] = [
        ("right and in language", "correct", |r| {
            Some(r.tgt_correct_in_language)
        }),
        ("accuracy (right, in any language)", "accuracy", |r| {
            Some(r.tgt_accuracy)
        }),
        ("fidelity", "fidelity", |r| Some(r.tgt_fidelity)),
        ("English accuracy", "en_accuracy", |r| Some(r.en_accuracy)),
        (
            "win rate against SFT at the largest size",
            "win_rate",
            |r| r.win_rate,
        ),
    ];
    for &lang in &c.langs {
        for (what, file, pick) in charts {
            let mut series: BTreeMap<String, Vec<(f64, Estimate)>> = BTreeMap::new();
            for row in r.rows.iter().filter(|x| x.lang == lang) {
                let Some(e) = pick(row) else { continue };
                match row.size {
                    Some(n)
                        if row.method == CLO_DPOP
                            || row.method == CLO_NLL
                            || c.main_methods.iter().any(|m| m.name() == row.method) =>
                    {
                        series
                            .entry(row.method.clone())
                            .or_default()
                            .push((n as f64, e))
                    }
                    Some(_) => {}
                    None => {
                        for &n in &c.sizes {
                            series.entry("base".into()).or_default().push((n as f64, e));
                        }
                    }
                }
            }
            for pts in series.values_mut() {
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            let title = format!("{lang} ({} resource): {what}", lang.tier());
            let name = format!("{file}_{lang}.svg");
            let _ = writeln!(md, "![{title}]({name})\n");
            files.insert(
                name,
                line_chart(&title, "training quadruples", "share", &series),
            );
        }
    }
    md.push_str("## Files\n\n- `results.json`: every number above\n- `tuning.json`: each method's grid and validation scores per language\n- `base-eval/`, `tune/*/*/val-eval/`, `runs/*/*/eval/`: answers (`responses.jsonl`) and results per model\n- `runs/LANG/METHOD-nSIZE-sSEED/`, `tune/LANG/METHOD-lrLR-bBETA/`: the training runs (`clo train` layout: metrics with rewards, best weights)\n- `data/`: quadruples per language, size and seed; `test.json` and `validation.json`\n");
    files.insert("report.md".into(), md);
    files
}
