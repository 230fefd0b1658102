//! `clo eval report`: gathers the `results.json` of evals (mc, gen, judge) under run
//! directories and writes a Markdown table and SVG charts: fidelity, accuracy and win rate per
//! method and language, and fidelity against training-data size.
//!
//! An eval is attributed to the training run it sits in (the nearest ancestor directory with a
//! `summary.json` from `clo train`): its method and its number of training quadruples. An eval
//! outside any run (a base model) is named after its directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{CoreError, Result};

/// Who was evaluated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct System {
    /// The method of the run, or the eval directory's name.
    pub method: String,
    /// Training quadruples of the run.
    pub size: Option<usize>,
    /// The run (or eval) directory.
    pub dir: PathBuf,
}

/// What a table's rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// One row per method (and size): runs of the same method and size (seeds) pooled, as the
    /// report of a study wants them.
    Methods,
    /// One row per run, named after its directory (the web UI's evals page).
    Runs,
}

impl System {
    /// The run directory's name for a run; the eval directory's name otherwise.
    pub fn run_label(&self) -> String {
        match self.size {
            Some(_) => self
                .dir
                .file_name()
                .map_or_else(|| self.method.clone(), |n| n.to_string_lossy().into_owned()),
            None => self.method.clone(),
        }
    }

    /// `method`, or `method@size` when runs of several sizes are shown.
    pub fn label(&self, with_size: bool) -> String {
        match (with_size, self.size) {
            (true, Some(n)) => format!("{}@{n}", self.method),
            _ => self.method.clone(),
        }
    }
}

/// A value with its standard error.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Estimate {
    pub value: f64,
    pub stderr: f64,
}

/// One eval's numbers per language.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalResult {
    Mc {
        accuracy: BTreeMap<String, Estimate>,
    },
    Gen {
        fidelity: BTreeMap<String, Estimate>,
        s_index: BTreeMap<String, f64>,
        choice: BTreeMap<String, Estimate>,
    },
    Judge {
        b: System,
        win_rate: BTreeMap<String, Estimate>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub system: System,
    pub path: PathBuf,
    pub result: EvalResult,
}

/// The run a path belongs to: the nearest ancestor (or itself) with a `summary.json`.
fn system_of(path: &Path) -> System {
    let start = if path.is_file() {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    for dir in start.ancestors() {
        let summary = dir.join("summary.json");
        if let Ok(text) = std::fs::read_to_string(&summary)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Some(method) = v.get("method").and_then(Value::as_str)
        {
            return System {
                method: method.to_string(),
                size: v
                    .get("train_quadruples")
                    .and_then(Value::as_u64)
                    .map(|n| n as usize),
                dir: dir.to_path_buf(),
            };
        }
    }
    // Name it after the first directory that is not an eval's own (eval/, gen/, mc/, judge/).
    let name = (start.ancestors())
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .find(|n| !["eval", "evals", "gen", "mc", "judge"].contains(&n.as_str()))
        .unwrap_or_else(|| start.display().to_string());
    System {
        method: name,
        size: None,
        dir: start.to_path_buf(),
    }
}

/// Per-language estimates picked out of typed stats.
fn estimates<T>(
    per_language: &BTreeMap<String, T>,
    pick: impl Fn(&T) -> Option<Estimate>,
) -> BTreeMap<String, Estimate> {
    per_language
        .iter()
        .filter_map(|(lang, stats)| pick(stats).map(|e| (lang.clone(), e)))
        .collect()
}

/// Per-language mean S-index picked out of typed stats (languages without one left out).
fn s_index_means<T>(
    per_language: &BTreeMap<String, T>,
    pick: impl Fn(&T) -> Option<f64>,
) -> BTreeMap<String, f64> {
    per_language
        .iter()
        .filter_map(|(lang, stats)| pick(stats).map(|x| (lang.clone(), x)))
        .collect()
}

fn accuracy(a: &super::Accuracy) -> Estimate {
    Estimate {
        value: a.accuracy,
        stderr: a.stderr,
    }
}

fn read_entry(path: &Path) -> Result<Option<Entry>> {
    let Some(results) = super::EvalResults::read(path)? else {
        return Ok(None); // not an eval result
    };
    let (result, judged) = match results {
        super::EvalResults::Mc { per_language, .. } => (
            EvalResult::Mc {
                accuracy: estimates(&per_language, |a| Some(accuracy(a))),
            },
            None,
        ),
        super::EvalResults::Gen { per_language, .. } => (
            EvalResult::Gen {
                fidelity: estimates(&per_language, |s| Some(accuracy(&s.fidelity))),
                s_index: s_index_means(&per_language, |s| s.s_index_mean),
                choice: estimates(&per_language, |s| s.choice_accuracy.as_ref().map(accuracy)),
            },
            None,
        ),
        // The toy eval's fidelity is the same measure as `gen`'s (the language of each response);
        // its answer accuracy is not multiple choice, so it is not shown as one.
        super::EvalResults::Toy { per_language, .. } => (
            EvalResult::Gen {
                fidelity: estimates(&per_language, |s| Some(accuracy(&s.fidelity))),
                s_index: s_index_means(&per_language, |s| s.s_index_mean),
                choice: BTreeMap::new(),
            },
            None,
        ),
        super::EvalResults::Judge {
            a, b, per_language, ..
        } => (
            EvalResult::Judge {
                b: system_of(&b),
                win_rate: estimates(&per_language, |w| {
                    Some(Estimate {
                        value: w.win_rate,
                        stderr: w.stderr,
                    })
                }),
            },
            Some(a),
        ),
    };
    let system = match &judged {
        Some(a) => system_of(a),
        None => system_of(path.parent().unwrap_or(path)),
    };
    Ok(Some(Entry {
        system,
        path: path.to_path_buf(),
        result,
    }))
}

fn find_results(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| CoreError::io("list", dir, e))?;
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() && depth > 0 {
            find_results(&p, depth - 1, out)?;
        } else if p.file_name().is_some_and(|n| n == "results.json") {
            out.push(p);
        }
    }
    Ok(())
}

/// Every eval result under `dirs` (searched 4 levels deep).
pub fn collect(dirs: &[PathBuf]) -> Result<Vec<Entry>> {
    let mut paths = Vec::new();
    for d in dirs {
        if d.is_file() {
            paths.push(d.clone());
        } else {
            find_results(d, 4, &mut paths)?;
        }
    }
    paths.sort();
    paths.dedup();
    let mut entries = Vec::new();
    for p in paths {
        entries.extend(read_entry(&p)?);
    }
    if entries.is_empty() {
        return Err(CoreError::Invalid(format!(
            "no eval results (results.json of clo eval mc|gen|judge) under {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(entries)
}

/// Means of the estimates of runs with the same label (seeds), with the standard error of the
/// mean across them when there are several, else the single run's own standard error.
pub fn pooled(values: &[Estimate]) -> Estimate {
    let n = values.len() as f64;
    let mean = values.iter().map(|e| e.value).sum::<f64>() / n;
    if values.len() == 1 {
        return values[0];
    }
    let var = values.iter().map(|e| (e.value - mean).powi(2)).sum::<f64>() / (n - 1.0);
    Estimate {
        value: mean,
        stderr: (var / n).sqrt(),
    }
}

/// A table: rows (labels) x languages -> pooled estimates.
pub type Grid = BTreeMap<String, BTreeMap<String, Estimate>>;

fn grid<'a>(entries: impl Iterator<Item = (String, &'a BTreeMap<String, Estimate>)>) -> Grid {
    let mut raw: BTreeMap<String, BTreeMap<String, Vec<Estimate>>> = BTreeMap::new();
    for (label, per) in entries {
        for (lang, e) in per {
            raw.entry(label.clone())
                .or_default()
                .entry(lang.clone())
                .or_default()
                .push(*e);
        }
    }
    raw.into_iter()
        .map(|(l, per)| (l, per.into_iter().map(|(k, v)| (k, pooled(&v))).collect()))
        .collect()
}

fn md_table(title: &str, what: &str, g: &Grid) -> String {
    let langs: BTreeSet<&String> = g.values().flat_map(|m| m.keys()).collect();
    let mut s = format!(
        "## {title}\n\n{what}\n\n| | {} |\n|---|{}\n",
        langs
            .iter()
            .map(|l| l.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(langs.len())
    );
    for (label, per) in g {
        let cells: Vec<String> = langs
            .iter()
            .map(|l| match per.get(*l) {
                Some(e) => format!("{:.3} ± {:.3}", e.value, e.stderr),
                None => "–".into(),
            })
            .collect();
        let _ = writeln!(s, "| {label} | {} |", cells.join(" | "));
    }
    s.push('\n');
    s
}

/// One table of the report (and of the evals page): systems x languages.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReportTable {
    pub title: String,
    /// What the numbers are, in a sentence.
    pub what: String,
    /// The measure's name (the chart's y axis).
    pub metric: String,
    /// The SVG file of the report that charts it.
    pub file: String,
    /// Row label (`method` or `method@size`) -> language -> pooled estimate.
    pub rows: Grid,
}

/// The report's tables (fidelity, generated-answer accuracy, log-likelihood accuracy, win
/// rate), those with data, as typed numbers, one row per method.
pub fn tables(entries: &[Entry]) -> Vec<ReportTable> {
    tables_by(entries, Rows::Methods)
}

/// [`tables`] with the rows `rows` asks for.
pub fn tables_by(entries: &[Entry], rows: Rows) -> Vec<ReportTable> {
    let sizes: BTreeSet<Option<usize>> = entries.iter().map(|e| e.system.size).collect();
    let with_size = sizes.len() > 1;
    let label = |s: &System| match rows {
        Rows::Methods => s.label(with_size),
        Rows::Runs => s.run_label(),
    };
    let fid = grid(entries.iter().filter_map(|e| match &e.result {
        EvalResult::Gen { fidelity, .. } => Some((label(&e.system), fidelity)),
        _ => None,
    }));
    let choice = grid(entries.iter().filter_map(|e| match &e.result {
        EvalResult::Gen { choice, .. } if !choice.is_empty() => Some((label(&e.system), choice)),
        _ => None,
    }));
    let mc = grid(entries.iter().filter_map(|e| match &e.result {
        EvalResult::Mc { accuracy } => Some((label(&e.system), accuracy)),
        _ => None,
    }));
    let judge = grid(entries.iter().filter_map(|e| match &e.result {
        EvalResult::Judge { b, win_rate } => {
            Some((format!("{} vs {}", label(&e.system), label(b)), win_rate))
        }
        _ => None,
    }));
    [

        (
            fid,
            "Language fidelity",
            "Share of responses in the prompt's language (language identification of each response, `clo eval gen`).",
            "fidelity.svg",
            "fidelity",
        ),
        (
            choice,
            "Answer accuracy (generated)",
            "Share of multiple-choice questions answered correctly in generated text (`Answer: X` or the language's label, up to three regenerations; unextractable = wrong).",
            "choice_accuracy.svg",
            "accuracy",
        ),
        (
            mc,
            "Accuracy (log-likelihood)",
            "Share of BELEBELE-style questions whose correct option has the highest log-likelihood (`clo eval mc`).",
            "accuracy.svg",
            "accuracy",
        ),
        (
            judge,
            "Win rate",
            "Share of pairs the judge preferred the first system's response, both orders judged, ties 0.5 (`clo eval judge`).",
            "win_rate.svg",
            "win rate",
        ),
    ]
    .into_iter()
    .filter(|(g, ..)| !g.is_empty())
    .map(|(g, title, what, file, metric)| ReportTable {
        title: title.into(),
        what: what.into(),
        metric: metric.into(),
        file: file.into(),
        rows: g,
    })
    .collect()
}

/// The report's files: name -> contents (`report.md` and the SVG charts it links).
pub fn render(entries: &[Entry]) -> BTreeMap<String, String> {
    let sizes: BTreeSet<Option<usize>> = entries.iter().map(|e| e.system.size).collect();
    let with_size = sizes.len() > 1;
    let label = |s: &System| s.label(with_size);
    let mut files = BTreeMap::new();
    let mut md = String::from("# clo eval report\n\n");
    let _ = writeln!(
        md,
        "{} eval results. Rows are methods (`method@size` = training quadruples); several runs with the same label (seeds) are averaged, and ± is then the standard error across them, else the eval's own standard error.\n",
        entries.len()
    );
    let sources: Vec<String> = entries
        .iter()
        .map(|e| format!("- `{}`: {}", e.path.display(), label(&e.system)))
        .collect();

    for t in tables(entries) {
        md.push_str(&md_table(&t.title, &t.what, &t.rows));
        let _ = writeln!(md, "![{}]({})\n", t.title, t.file);
        files.insert(t.file.clone(), bar_chart(&t.title, &t.metric, &t.rows));
    }

    // Fidelity against data size: per method, the mean over non-English languages.
    let mut curve: BTreeMap<String, BTreeMap<usize, Vec<f64>>> = BTreeMap::new();
    for e in entries {
        if let (EvalResult::Gen { fidelity, .. }, Some(size)) = (&e.result, e.system.size) {
            let target: Vec<f64> = (fidelity.iter())
                .filter(|(l, _)| l.as_str() != "en")
                .map(|(_, e)| e.value)
                .collect();
            if !target.is_empty() {
                curve
                    .entry(e.system.method.clone())
                    .or_default()
                    .entry(size)
                    .or_default()
                    .push(target.iter().sum::<f64>() / target.len() as f64);
            }
        }
    }
    if curve.values().any(|m| m.len() > 1) {
        let series: BTreeMap<String, Vec<(f64, Estimate)>> = (curve.into_iter())
            .map(|(method, by_size)| {
                let pts = (by_size.into_iter())
                    .map(|(n, v)| {
                        let est: Vec<Estimate> = v
                            .iter()
                            .map(|x| Estimate {
                                value: *x,
                                stderr: 0.0,
                            })
                            .collect();
                        (n as f64, pooled(&est))
                    })
                    .collect();
                (method, pts)
            })
            .collect();
        md.push_str("## Fidelity against data size\n\nTarget-language fidelity (mean over the non-English languages) by number of training quadruples; ± over seeds.\n\n| method | size | fidelity |\n|---|---|---|\n");
        for (m, pts) in &series {
            for (x, e) in pts {
                let _ = writeln!(md, "| {m} | {x} | {:.3} ± {:.3} |", e.value, e.stderr);
            }
        }
        md.push_str("\n![Fidelity against data size](fidelity_vs_size.svg)\n\n");
        files.insert(
            "fidelity_vs_size.svg".into(),
            line_chart(
                "Fidelity against data size",
                "training quadruples",
                "fidelity",
                &series,
            ),
        );
    }
    md.push_str("## Sources\n\n");
    md.push_str(&sources.join("\n"));
    md.push('\n');
    files.insert("report.md".into(), md);
    files
}

pub use super::charts::{bar_chart, line_chart};

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(path: &Path, v: &Value) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, v.to_string()).unwrap();
    }

    /// A `clo eval gen` result (as the type writes it) with these fidelities and stderrs.
    fn gen_result(fid_sw: f64, fid_en: f64) -> Value {
        let stats =
            |accuracy: f64, stderr: f64, s_index: Option<f64>| super::super::generated::GenStats {
                n: 10,
                fidelity: super::super::Accuracy {
                    n: 10,
                    correct: 0,
                    accuracy,
                    stderr,
                },
                detected: BTreeMap::new(),
                s_index_mean: s_index,
                s_index_n: 10,
                code_switched: None,
                choice_accuracy: None,
                unextracted: None,
            };
        let per_language = BTreeMap::from([
            ("sw".to_string(), stats(fid_sw, 0.1, Some(0.2))),
            ("en".to_string(), stats(fid_en, 0.05, None)),
        ]);
        serde_json::to_value(super::super::EvalResults::Gen {
            model: super::super::ModelRef {
                dir: "m".into(),
                weights_sha256: "00".into(),
            },
            config: json!({}),
            per_language,
            overall: stats(0.5, 0.1, None),
        })
        .unwrap()
    }

    /// Two methods at two sizes, two seeds at one of them; a base-model eval; a judge result.
    #[test]
    fn report_attributes_results_to_runs_and_pools_seeds() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let run = |name: &str, method: &str, n: usize, fid: f64| {
            write(
                &r.join(name).join("summary.json"),
                &json!({"method": method, "train_quadruples": n}),
            );
            write(
                &r.join(name).join("eval/gen/results.json"),
                &gen_result(fid, 0.9),
            );
        };
        run("clo-200-s0", "clo", 200, 0.6);
        run("clo-200-s1", "clo", 200, 0.8);
        run("clo-400", "clo", 400, 0.9);
        run("sft-200", "sft", 200, 0.3);
        run("sft-400", "sft", 400, 0.5);
        write(&r.join("base/gen/results.json"), &gen_result(0.1, 1.0));
        let win = super::super::judge::WinRate {
            n: 4,
            wins: 3,
            ties: 0,
            losses: 1,
            invalid_judgements: 0,
            order_disagreements: 0,
            win_rate: 0.75,
            stderr: 0.1,
        };
        write(
            &r.join("judge/results.json"),
            &serde_json::to_value(super::super::EvalResults::Judge {
                a: r.join("clo-400/eval/gen/responses.jsonl"),
                b: r.join("sft-400/eval/gen/responses.jsonl"),
                judge: "openai:http://127.0.0.1/v1#judge".into(),
                config: json!({}),
                per_language: BTreeMap::from([("sw".to_string(), win.clone())]),
                overall: win,
            })
            .unwrap(),
        );
        write(&r.join("other.json"), &json!({"not": "an eval"}));
        let entries = collect(&[r.to_path_buf()]).unwrap();
        assert_eq!(entries.len(), 7);
        let files = render(&entries);
        let md = &files["report.md"];
        // The typed tables (what the evals page draws) hold the numbers of the Markdown, and
        // name the chart files the report wrote.
        let typed = tables(&entries);
        assert_eq!(
            typed.iter().map(|t| t.file.as_str()).collect::<Vec<_>>(),
            ["fidelity.svg", "win_rate.svg"]
        );
        let fid = &typed[0].rows;
        assert_eq!(fid["clo@200"]["en"].value, 0.9);
        for t in &typed {
            assert!(files.contains_key(&t.file));
            for (label, per) in &t.rows {
                let e = per.values().next().unwrap();
                let cell = format!("| {label} | {:.3} ± {:.3} |", e.value, e.stderr);
                assert!(md.contains(&cell), "{cell} in {md}");
            }
        }
        // Seeds pooled: mean 0.7, stderr of the mean sqrt(0.02 / 2) = 0.1.
        // Columns en | sw. English was 0.9 in both seeds: no spread across seeds.
        assert!(
            md.contains("| clo@200 | 0.900 ± 0.000 | 0.700 ± 0.100 |"),
            "{md}"
        );
        assert!(
            md.contains("| base | 1.000 ± 0.050 | 0.100 ± 0.100 |"),
            "{md}"
        );
        assert!(
            md.contains("| clo@400 vs sft@400 | 0.750 ± 0.100 |"),
            "{md}"
        );
        assert!(md.contains("| clo | 200 | 0.700 ± 0.100 |"), "{md}");
        assert!(md.contains("| sft | 400 | 0.500 ± 0.000 |"), "{md}");
        for f in ["fidelity.svg", "win_rate.svg", "fidelity_vs_size.svg"] {
            let svg = &files[f];
            assert!(
                svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
                "{f}"
            );
        }
        assert!(!files.contains_key("accuracy.svg"));
        // One bar per (language, label): 2 languages x 5 labels (clo@200 pools two seeds), and
        // one legend swatch per label.
        assert_eq!(
            crate::eval::charts::series_marks(&files["fidelity.svg"], "rect"),
            2 * 5 + 5
        );
        let err = collect(&[r.join("base/nothing")]).unwrap_err().to_string();
        assert!(err.contains("nothing"), "{err}");
    }
}
