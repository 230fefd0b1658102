//! The quickstart's table and `report.md` with its charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{QuickstartResults, Row};
use crate::eval::report::{Estimate, Grid, bar_chart, line_chart};

/// The table printed at the end and put in the report.
pub fn table(results: &QuickstartResults) -> String {
    let l = results.config.lang.code();
    let mut s = format!(
        "| system | size | seeds | {l} fidelity | {l} accuracy | {l} right & in {l} | en fidelity | en accuracy |\n|---|---|---|---|---|---|---|---|\n",
    );
    let cell = |m: &BTreeMap<String, (f64, f64)>, l: &str| {
        m.get(l)
            .map_or("–".into(), |(v, e)| format!("{v:.3} ± {e:.3}"))
    };
    for r in &results.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.system,
            r.size.map_or("–".into(), |n| n.to_string()),
            if r.size.is_some() {
                r.seeds.to_string()
            } else {
                "–".into()
            },
            cell(&r.fidelity, l),
            cell(&r.accuracy, l),
            cell(&r.correct_in_language, l),
            cell(&r.fidelity, "en"),
            cell(&r.accuracy, "en"),
        );
    }
    s
}

/// `report.md` and its charts.
pub fn render_report(results: &QuickstartResults) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let c = &results.config;
    let mut md = String::from("# clo quickstart: CLO and SFT in the toy world\n\n");
    let _ = writeln!(
        md,
        "Base model `{}` (English-centric: pretrained mostly on English; toy-language text is a small share of statements and of dialogs asked in that language and answered in English). Target language `{}`. Each method trained its attention projections on the same quadruples ({} epoch(s), batch {}, lambda {}; learning rate and beta per method: {}), keeping the checkpoint with the lowest validation loss, for sizes {:?} and seeds {:?}. Every model then answered {} held-out questions in English and in `{}` (greedy). Total wall time {:.0} s.\n",
        results.base_model.display(),
        c.lang,
        c.epochs,
        c.batch_size,
        c.lambda,
        c.methods
            .iter()
            .map(|m| {
                let (lr, beta) = c.setting(*m);
                format!("{} lr {lr} beta {beta}", m.name())
            })
            .collect::<Vec<_>>()
            .join(", "),
        c.sizes,
        c.seeds,
        results.questions,
        c.lang,
        results.wall_s
    );
    md.push_str("## What the numbers mean\n\n\
- **toy fidelity**: share of answers to toy-language questions that are in the toy language (most of their words are in the toy lexicon; names and numbers count for neither language).\n\
- **toy accuracy**: share of answers to toy-language questions whose content (names, numbers, animals, colours, cities, in order) is the true answer's, in whichever language they are written.\n\
- **toy right & in toy**: both at once: the answer a toy speaker wanted.\n\
- **en fidelity / en accuracy**: the same for the English questions: how much English the model kept.\n\
- The held-out questions are never asked in any training quadruple: the facts of 6 people, a quarter of the sums and differences, lists naming a held-out person, and new words to repeat. Validation questions (2 more people, other sums, other words) are held out too and never overlap them. The base model knows the facts in English from pretraining; answering them in the toy language needs cross-lingual transfer.\n\
- ± is the standard error across seeds (or, with one seed, of the eval itself).\n\n");
    md.push_str("## Results\n\n");
    md.push_str(&table(results));
    md.push('\n');

    let label = |r: &Row| match r.size {
        Some(n) if c.sizes.len() > 1 => format!("{}@{n}", r.system),
        _ => r.system.clone(),
    };
    type PerLang = BTreeMap<String, (f64, f64)>;
    let grid = |f: &dyn Fn(&Row) -> &PerLang| -> Grid {
        results
            .rows
            .iter()
            .map(|r| {
                (
                    label(r),
                    f(r).iter()
                        .map(|(l, (v, e))| {
                            (
                                l.clone(),
                                Estimate {
                                    value: *v,
                                    stderr: *e,
                                },
                            )
                        })
                        .collect(),
                )
            })
            .collect()
    };
    for (title, file, g) in [
        ("Language fidelity", "fidelity.svg", grid(&|r| &r.fidelity)),
        ("Answer accuracy", "accuracy.svg", grid(&|r| &r.accuracy)),
        (
            "Right and in the prompt's language",
            "correct_in_language.svg",
            grid(&|r| &r.correct_in_language),
        ),
    ] {
        let _ = writeln!(md, "![{title}]({file})\n");
        files.insert(file.to_string(), bar_chart(title, "share", &g));
    }
    if c.sizes.len() > 1 {
        md.push_str("## Against data size\n\n");
        fn fidelity(r: &Row) -> &BTreeMap<String, (f64, f64)> {
            &r.fidelity
        }
        fn accuracy(r: &Row) -> &BTreeMap<String, (f64, f64)> {
            &r.accuracy
        }
        type Pick = fn(&Row) -> &BTreeMap<String, (f64, f64)>;
        let charts: [(&str, &str, Pick, &str); 3] = [
            (
                "Target-language fidelity against data size",
                "fidelity_vs_size.svg",
                fidelity,
                c.lang.code(),
            ),
            (
                "Target-language accuracy against data size",
                "accuracy_vs_size.svg",
                accuracy,
                c.lang.code(),
            ),
            (
                "English accuracy against data size",
                "en_accuracy_vs_size.svg",
                accuracy,
                "en",
            ),
        ];
        for (title, file, pick, lang) in charts {
            let mut series: BTreeMap<String, Vec<(f64, Estimate)>> = BTreeMap::new();
            for r in &results.rows {
                let (v, e) = pick(r)[lang];
                let est = Estimate {
                    value: v,
                    stderr: e,
                };
                match r.size {
                    Some(n) => series
                        .entry(r.system.clone())
                        .or_default()
                        .push((n as f64, est)),
                    // The base model is a flat line across the sizes.
                    None => {
                        for &n in &c.sizes {
                            series
                                .entry("base".into())
                                .or_default()
                                .push((n as f64, est));
                        }
                    }
                }
            }
            for pts in series.values_mut() {
                pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
            let _ = writeln!(md, "![{title}]({file})\n");
            files.insert(
                file.to_string(),
                line_chart(title, "training quadruples", "share", &series),
            );
        }
    }
    md.push_str("## Files\n\n- `results.json`: the table's numbers\n- `base-eval/`, `runs/*/eval/`: `responses.jsonl` (every question, response, expected answer and verdict) and `results.json` per model (with accuracy per kind of question)\n- `runs/*/`: the training runs (`clo train` layout: metrics, checkpoints, best weights)\n- `data/`: the quadruples of each size and seed, and the held-out questions\n");
    files.insert("report.md".into(), md);
    files
}
