//! `clo quickstart`: CLO against SFT in the toy world, end to end on a CPU.
//!
//! From an English-centric toy model (the shipped one by default): build quadruples for the toy
//! language, train SFT and CLO on the same data (per size and seed), answer held-out questions
//! in both languages with every model (greedy), and score language fidelity and answer
//! accuracy. Writes `OUT/results.json`, `OUT/report.md` with SVG charts, and every run's files.
//! An interrupted quickstart continues where it stopped: finished evals are kept, an unfinished
//! run resumes from its checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::ToyLangId;
use super::data::{EvalQuestion, eval_questions, quadruples, quadruples_jsonl};
use super::world::{Lang, World, atoms, render};

mod report;
pub use self::report::{render_report, table};
use crate::Pretrained;
use crate::error::{CoreError, Result};
use crate::eval::Accuracy;
use crate::eval::langid::{LanguageIdentifier, s_index};
use crate::eval::report::{Estimate, pooled};
use crate::eval::results::{EvalResults, ModelRef};
use crate::fsutil::{write_atomically, write_json_atomically};
use crate::infer::generate::{SamplingConfig, StopReason};
use crate::train::reference::weights_digest;
use crate::train::{Method, Outcome, Progress, RunConfig, TrainOptions, TrainableKind, train};

/// A method's learning rate and beta.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tuned {
    pub lr: f64,
    pub beta: f64,
}

/// Settings of a quickstart. The protocol is the paper's (1 epoch, the checkpoint with the
/// lowest validation loss), with each method's learning rate and beta as tuned by
/// `clo quickstart --study` for the medium-resource language at 800 quadruples ([`TUNED`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuickstartConfig {
    /// The toy language trained for (default `toy`, the medium-resource one).
    #[serde(default = "default_lang")]
    pub lang: Lang,
    /// Training quadruples per run; several sizes make a data-size curve.
    pub sizes: Vec<usize>,
    /// Seeds of data sampling and training; results are averaged over them.
    pub seeds: Vec<u64>,
    pub methods: Vec<Method>,
    pub epochs: usize,
    pub batch_size: usize,
    /// Learning rate and beta of methods that `tuned` does not name.
    pub lr: f64,
    pub beta: f64,
    /// Per method (by name): its tuned learning rate and beta.
    #[serde(default)]
    pub tuned: BTreeMap<String, Tuned>,
    pub lambda: f64,
    /// Held-out questions per kind (facts: every held-out person instead).
    pub per_kind: usize,
    pub max_new_tokens: usize,
    /// Prompts decoded together.
    pub eval_batch: usize,
}

fn default_lang() -> Lang {
    Lang::Toy
}

/// Each method's learning rate and beta as `clo quickstart --study` chose them on its
/// validation questions for `toy` at 800 quadruples, seed 0 (its `tuning.json`; README, "The
/// toy study"). The study's output is kept in `core/assets/toy-study/`; a test checks these
/// values against its `tuning.json`.
pub const TUNED: [(Method, Tuned); 2] = [
    (
        Method::Sft,
        Tuned {
            lr: 1e-3,
            beta: 0.1,
        },
    ),
    (
        Method::Clo,
        Tuned {
            lr: 3e-4,
            beta: 0.1,
        },
    ),
];

impl QuickstartConfig {
    /// The learning rate and beta `method` trains with.
    pub fn setting(&self, method: Method) -> (f64, f64) {
        self.tuned
            .get(method.name())
            .map_or((self.lr, self.beta), |t| (t.lr, t.beta))
    }
}

impl Default for QuickstartConfig {
    fn default() -> Self {
        Self {
            lang: Lang::Toy,
            sizes: vec![800],
            seeds: vec![0],
            methods: vec![Method::Sft, Method::Clo],
            epochs: 1,
            batch_size: 8,
            lr: 1e-3,
            beta: 0.1,
            tuned: TUNED
                .iter()
                .map(|(m, t)| (m.name().to_string(), *t))
                .collect(),
            lambda: 0.5,
            per_kind: 12,
            max_new_tokens: 40,
            eval_batch: 32,
        }
    }
}

/// One answered question: a line of `responses.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyItem {
    pub id: String,
    pub kind: String,
    pub lang: String,
    pub prompt: String,
    pub response: String,
    /// The true answer in the prompt's language.
    pub expected: String,
    /// The response carries exactly the answer's content (in either language).
    pub correct: bool,
    pub detected: Option<String>,
    /// The response is in the prompt's language.
    pub in_language: bool,
    pub s_index: Option<f64>,
    pub stop: StopReason,
}

pub use crate::eval::results::ToyStats;

impl ToyStats {
    pub fn of(items: &[&ToyItem]) -> Self {
        let mut kinds: BTreeMap<String, Vec<bool>> = BTreeMap::new();
        for i in items {
            kinds.entry(i.kind.clone()).or_default().push(i.correct);
        }
        let s: Vec<f64> = items.iter().filter_map(|i| i.s_index).collect();
        ToyStats {
            n: items.len(),
            fidelity: Accuracy::from_outcomes(items.iter().map(|i| i.in_language)),
            accuracy: Accuracy::from_outcomes(items.iter().map(|i| i.correct)),
            correct_in_language: Accuracy::from_outcomes(
                items.iter().map(|i| i.correct && i.in_language),
            ),
            per_kind: kinds
                .into_iter()
                .map(|(k, v)| (k, Accuracy::from_outcomes(v)))
                .collect(),
            s_index_mean: (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64),
        }
    }
}

/// `results.json` of one evaluated model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToyResults {
    pub task: String,
    pub model: PathBuf,
    pub per_language: BTreeMap<String, ToyStats>,
}

/// Answers every held-out question in each of `langs` (greedy) and checks each response.
pub fn eval_toy(
    lm: &Pretrained,
    questions: &[EvalQuestion],
    langs: &[Lang],
    max_new_tokens: usize,
    batch: usize,
    on_done: &mut dyn FnMut(usize),
) -> Result<Vec<ToyItem>> {
    let tok = &lm.tokenizer;
    let langid = ToyLangId;
    let jobs: Vec<(&EvalQuestion, Lang)> = langs
        .iter()
        .flat_map(|l| questions.iter().map(move |q| (q, *l)))
        .collect();
    let mut items = Vec::with_capacity(jobs.len());
    for chunk in jobs.chunks(batch.max(1)) {
        let prompts: Vec<String> = chunk.iter().map(|(q, l)| render(&q.question, *l)).collect();
        let ids: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| tok.prompt_ids(p, true))
            .collect::<Result<_>>()?;
        let configs = vec![
            SamplingConfig {
                temperature: 0.0,
                top_p: 1.0,
                seed: 0,
                max_new_tokens,
            };
            chunk.len()
        ];
        let outs = lm.generate_batch(&ids, &configs, |_, _| {});
        for (((q, lang), prompt), out) in chunk.iter().zip(prompts).zip(outs) {
            let response = tok.decode(&out.ids, true)?.trim().to_string();
            let expected = render(&q.answer, *lang);
            let detected = langid.detect(&response);
            let labels = langid.word_labels(&response);
            items.push(ToyItem {
                id: q.id.clone(),
                kind: q.kind.clone(),
                lang: lang.code().into(),
                prompt,
                correct: atoms(&response) == atoms(&expected),
                in_language: detected.as_deref() == Some(lang.code()),
                detected,
                s_index: s_index(labels.iter().map(|(_, l)| l.as_deref())),
                expected,
                response,
                stop: out.stop,
            });
        }
        on_done(chunk.len());
    }
    Ok(items)
}

/// Results per language of a list of answered questions (the languages asked in).
pub fn toy_results(model: &Path, items: &[ToyItem]) -> ToyResults {
    let mut langs: Vec<&str> = items.iter().map(|i| i.lang.as_str()).collect();
    langs.sort();
    langs.dedup();
    let per_language = langs
        .into_iter()
        .map(|l| {
            let mine: Vec<&ToyItem> = items.iter().filter(|i| i.lang == l).collect();
            (l.to_string(), ToyStats::of(&mine))
        })
        .collect();
    ToyResults {
        task: "toy".into(),
        model: model.to_path_buf(),
        per_language,
    }
}

/// What the quickstart reports while it works.
#[derive(Debug)]
pub enum QuickProgress<'a> {
    /// A new phase: `what` is e.g. `train clo n=800 seed=0`.
    Phase {
        what: String,
    },
    Train(Progress<'a>),
    /// `done` of `total` prompts answered in the current eval.
    Eval {
        done: usize,
        total: usize,
    },
}

/// One row of the table: a system (base, or a method at a size) over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub system: String,
    pub size: Option<usize>,
    pub seeds: usize,
    /// Per language: fidelity, accuracy, correct-and-in-language (mean over seeds ± standard
    /// error across seeds, or the eval's own standard error with one seed).
    pub fidelity: BTreeMap<String, (f64, f64)>,
    pub accuracy: BTreeMap<String, (f64, f64)>,
    pub correct_in_language: BTreeMap<String, (f64, f64)>,
    /// Training wall time per run, mean over seeds.
    pub train_s: Option<f64>,
}

/// `OUT/results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuickstartResults {
    pub config: QuickstartConfig,
    pub base_model: PathBuf,
    pub questions: usize,
    pub rows: Vec<Row>,
    pub wall_s: f64,
}

/// A model's toy eval written earlier (`EvalResults::Toy`), if any.
fn read_results(path: &Path) -> Option<ToyResults> {
    match EvalResults::read(path).ok()?? {
        EvalResults::Toy {
            model,
            per_language,
            ..
        } => Some(ToyResults {
            task: "toy".into(),
            model: model.dir,
            per_language,
        }),
        _ => None,
    }
}

/// The answered questions of an eval directory (`responses.jsonl`).
pub fn read_items(dir: &Path) -> Result<Vec<ToyItem>> {
    let path = dir.join("responses.jsonl");
    let text = crate::error::read_to_string(&path, "answered questions")?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                CoreError::Invalid(format!(
                    "{}:{}: {e}; delete the eval directory to redo it",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// Writes a model's answers (`responses.jsonl`) and its results, as the eval result type every
/// `clo eval` command writes (`EvalResults::Toy`).
fn write_eval(
    dir: &Path,
    model: ModelRef,
    config: serde_json::Value,
    items: &[ToyItem],
) -> Result<ToyResults> {
    let mut lines = String::new();
    for i in items {
        lines.push_str(&serde_json::to_string(i).expect("serializes"));
        lines.push('\n');
    }
    write_atomically(&dir.join("responses.jsonl"), lines.as_bytes())?;
    let results = toy_results(&model.dir, items);
    let all: Vec<&ToyItem> = items.iter().collect();
    EvalResults::Toy {
        model,
        config,
        per_language: results.per_language.clone(),
        overall: ToyStats::of(&all),
    }
    .write(&dir.join("results.json"))?;
    Ok(results)
}

/// The toy world of a model from `clo pretrain` (its `toy_world.json`).
pub fn read_world(base: &Path) -> Result<World> {
    let world_path = base.join("toy_world.json");
    serde_json::from_str(&crate::error::read_to_string(
        &world_path,
        "toy world of the model",
    )?)
    .map_err(|e| {
        CoreError::json(
            &world_path,
            &e,
            "the model must come from `clo pretrain` on the toy world (it writes toy_world.json)",
        )
    })
}

/// One fine-tuning run of the toy world: what it trains, on what, with which settings.
#[derive(Debug, Clone)]
pub(crate) struct RunSpec {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub method: Method,
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub beta: f64,
    pub lambda: f64,
    /// DPO-Positive weight (0: off).
    pub dpop: f64,
}

/// What the quickstart and the study share: training runs that resume and evals that are kept
/// once written.
pub(crate) struct Lab<'a> {
    pub base: &'a Path,
    pub device: &'a Device,
    pub cache: PathBuf,
    pub max_new_tokens: usize,
    pub eval_batch: usize,
}

impl Lab<'_> {
    /// Answers `questions` in `langs` with the model `load` gives, into `dir` (kept when there).
    pub fn evaluate(
        &self,
        name: &str,
        load: &dyn Fn() -> Result<Pretrained>,
        dir: &Path,
        questions: &[EvalQuestion],
        langs: &[Lang],
        progress: &mut dyn FnMut(QuickProgress),
    ) -> Result<ToyResults> {
        if let Some(r) = read_results(&dir.join("results.json")) {
            return Ok(r);
        }
        let lm = load()?;
        progress(QuickProgress::Phase {
            what: format!("eval {name}"),
        });
        let total = langs.len() * questions.len();
        let mut done = 0;
        let items = eval_toy(
            &lm,
            questions,
            langs,
            self.max_new_tokens,
            self.eval_batch,
            &mut |n| {
                done += n;
                progress(QuickProgress::Eval { done, total });
            },
        )?;
        let model = ModelRef {
            dir: lm.dir.clone(),
            weights_sha256: weights_digest(&lm.model),
        };
        let eval_config = serde_json::json!({
            "questions": questions.len(),
            "languages": langs,
            "max_new_tokens": self.max_new_tokens,
            "decoding": "greedy",
        });
        write_eval(dir, model, eval_config, &items)
    }

    fn run_config(&self, spec: &RunSpec) -> RunConfig {
        RunConfig {
            model: self.base.to_path_buf(),
            data: spec.data.clone(),
            method: spec.method,
            trainable: TrainableKind::Attention,
            epochs: spec.epochs,
            batch_size: spec.batch_size,
            lr: spec.lr,
            min_lr: spec.lr / 10.0,
            beta: spec.beta,
            lambda: spec.lambda,
            dpop: spec.dpop,
            max_len: 96,
            seed: spec.seed,
            ..RunConfig::default()
        }
    }

    /// Trains `spec` (resuming an unfinished run; a finished one is kept) and returns its
    /// summary.
    pub fn train(
        &self,
        name: &str,
        spec: &RunSpec,
        progress: &mut dyn FnMut(QuickProgress),
    ) -> Result<crate::train::RunSummary> {
        let run = self.run_config(spec);
        let summary_path = spec.dir.join("summary.json");
        // A run made with other settings (a tuning choice that changed) is never reused: it is
        // moved aside (`DIR.replaced-TIME`) and trained again.
        let saved = spec.dir.join("config.toml");
        let stale =
            saved.exists() && RunConfig::from_file(&saved).map_or(true, |previous| previous != run);
        if stale {
            tracing::warn!(dir = %spec.dir.display(), "the run was made with other settings: training it again");
        }
        if stale || !summary_path.exists() {
            progress(QuickProgress::Phase {
                what: format!("train {name}"),
            });
            let mut opts = TrainOptions::new(&spec.dir, &self.cache);
            opts.resume = !stale && saved.exists();
            opts.force = stale;
            opts.keep_checkpoints = 1;
            let outcome = train(&run, &opts, self.device, &mut |p| {
                progress(QuickProgress::Train(p))
            })?;
            if let Outcome::Cancelled { step, .. } = outcome {
                return Err(CoreError::Invalid(format!(
                    "training {name} stopped at step {step}; run again to resume"
                )));
            }
        }
        serde_json::from_str(&crate::error::read_to_string(&summary_path, "run summary")?)
            .map_err(|e| CoreError::json(&summary_path, &e, "delete the run to redo it"))
    }

    /// The best checkpoint (lowest validation loss) of a finished run.
    pub fn load_best(&self, spec: &RunSpec) -> Result<Pretrained> {
        let weights = crate::export::resolve_weights(&spec.dir, "best")?;
        crate::train::checkpoint::load_trained(&self.run_config(spec), &weights, self.device)
    }
}

/// Runs the quickstart from the toy model in `base` into `out`.
pub fn quickstart(
    base: &Path,
    out: &Path,
    config: &QuickstartConfig,
    device: &Device,
    progress: &mut dyn FnMut(QuickProgress),
) -> Result<QuickstartResults> {
    let started = Instant::now();
    if config.sizes.is_empty() || config.seeds.is_empty() || config.sizes.contains(&0) {
        return Err(CoreError::Invalid(
            "give at least one size (> 0) and one seed".into(),
        ));
    }
    if config.lang == Lang::En {
        return Err(CoreError::Invalid(
            "the target language is a toy language: vel, toy or zir".into(),
        ));
    }
    let world = read_world(base)?;
    std::fs::create_dir_all(out).map_err(|e| CoreError::io("create", out, e))?;
    let max_size = *config.sizes.iter().max().expect("non-empty");
    let lang = config.lang;

    // Data: per seed, the largest set; smaller sizes are its prefixes (nested subsets).
    let data_dir = out.join("data");
    let mut all_train = Vec::new();
    let mut data_files = BTreeMap::new();
    for &seed in &config.seeds {
        let quads = quadruples(&world, lang, max_size, seed);
        for &n in &config.sizes {
            let path = data_dir.join(format!("quads-n{n}-s{seed}.jsonl"));
            write_atomically(&path, quadruples_jsonl(&quads[..n]).as_bytes())?;
            data_files.insert((n, seed), path);
        }
        all_train.extend(quads);
    }
    let questions = eval_questions(&world, config.per_kind, world.seed, &all_train);
    write_json_atomically(&data_dir.join("questions.json"), &questions)?;

    let lab = Lab {
        base,
        device,
        cache: out.join("cache"),
        max_new_tokens: config.max_new_tokens,
        eval_batch: config.eval_batch,
    };
    let langs = [Lang::En, lang];
    let base_results = lab.evaluate(
        "base",
        &|| Pretrained::load(base, device),
        &out.join("base-eval"),
        &questions,
        &langs,
        progress,
    )?;

    let mut per_system: BTreeMap<(usize, String), Vec<(ToyResults, f64)>> = BTreeMap::new();
    for &n in &config.sizes {
        for &seed in &config.seeds {
            for &method in &config.methods {
                let name = format!("{}-n{n}-s{seed}", method.name());
                let (lr, beta) = config.setting(method);
                let spec = RunSpec {
                    dir: out.join("runs").join(&name),
                    data: data_files[&(n, seed)].clone(),
                    method,
                    seed,
                    epochs: config.epochs,
                    batch_size: config.batch_size,
                    lr,
                    beta,
                    lambda: config.lambda,
                    dpop: 0.0,
                };
                let summary = lab.train(&name, &spec, progress)?;
                let results = lab.evaluate(
                    &name,
                    &|| lab.load_best(&spec),
                    &spec.dir.join("eval"),
                    &questions,
                    &langs,
                    progress,
                )?;
                per_system
                    .entry((n, method.name().to_string()))
                    .or_default()
                    .push((results, summary.wall_s));
            }
        }
    }

    let mut rows = vec![row("base", None, &[(base_results, f64::NAN)])];
    for ((n, method), runs) in &per_system {
        rows.push(row(method, Some(*n), runs));
    }
    let results = QuickstartResults {
        config: config.clone(),
        base_model: base.to_path_buf(),
        questions: questions.len(),
        rows,
        wall_s: started.elapsed().as_secs_f64(),
    };
    write_json_atomically(&out.join("results.json"), &results)?;
    for (name, text) in render_report(&results) {
        write_atomically(&out.join(name), text.as_bytes())?;
    }
    Ok(results)
}

fn row(system: &str, size: Option<usize>, runs: &[(ToyResults, f64)]) -> Row {
    // The languages every run was asked in.
    let langs: Vec<&String> = runs
        .first()
        .map(|(r, _)| r.per_language.keys().collect())
        .unwrap_or_default();
    let langs: Vec<&String> = langs
        .into_iter()
        .filter(|l| runs.iter().all(|(r, _)| r.per_language.contains_key(*l)))
        .collect();
    let stat = |f: &dyn Fn(&ToyStats) -> Accuracy| -> BTreeMap<String, (f64, f64)> {
        langs
            .iter()
            .map(|l| {
                let est: Vec<Estimate> = runs
                    .iter()
                    .map(|(r, _)| {
                        let a = f(&r.per_language[l.as_str()]);
                        Estimate {
                            value: a.accuracy,
                            stderr: a.stderr,
                        }
                    })
                    .collect();
                let p = pooled(&est);
                (l.to_string(), (p.value, p.stderr))
            })
            .collect()
    };
    let times: Vec<f64> = runs.iter().map(|r| r.1).filter(|t| t.is_finite()).collect();
    Row {
        system: system.into(),
        size,
        seeds: runs.len(),
        fidelity: stat(&|s| s.fidelity),
        accuracy: stat(&|s| s.accuracy),
        correct_in_language: stat(&|s| s.correct_in_language),
        train_s: (!times.is_empty()).then(|| times.iter().sum::<f64>() / times.len() as f64),
    }
}

#[cfg(test)]
mod tests;
