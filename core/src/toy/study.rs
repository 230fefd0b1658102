//! `clo quickstart --study`: the paper's protocol in miniature, on the three toy languages of
//! the shipped English-centric model (`vel` high, `toy` medium, `zir` low resource).
//!
//! 1. The base model answers the test and the validation questions in every language: how
//!    English-centric it is ([`EnglishCentric`]).
//! 2. **Tuning**: per language and method, each learning rate of a small grid (and beta, for
//!    the preference methods named in [`StudyConfig::beta_methods`]) trains on
//!    [`StudyConfig::tune_size`] quadruples; the setting whose model answers the *validation*
//!    questions best wins ([`validation_score`]). The test questions are never read here.
//! 3. **Main curve**: SFT and CLO at every size and seed, each at its tuned setting.
//! 4. **Baselines** at one size: the other methods, tuned the same way.
//! 5. Metrics per language (fidelity, accuracy, right-and-in-language; mean over seeds with the
//!    standard error across them), the win rate against SFT at the largest size (the analogue
//!    of the paper's Figure 3), the rewards logged in training, tables and SVG figures.
//!
//! Every run trains 1 epoch and keeps its checkpoint with the lowest validation loss. Runs and
//! evals already on disk are kept, an unfinished run resumes: the study continues where it
//! stopped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::data::{Split, held_out_questions, quadruples, quadruples_jsonl};
use super::quickstart::{Lab, QuickProgress, RunSpec, ToyItem, ToyResults, read_items, read_world};
use super::world::Lang;
use crate::Pretrained;
use crate::error::{CoreError, Result};
use crate::eval::report::Estimate;
use crate::fsutil::{write_atomically, write_json_atomically};
use crate::train::Method;

mod report;
mod score;

pub use self::report::{render_study, study_tables};
pub use self::score::{english_centric, right_kind, win_rate};
use self::score::{study_row, verdict};

/// Settings of the study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyConfig {
    pub langs: Vec<Lang>,
    pub sizes: Vec<usize>,
    pub seeds: Vec<u64>,
    /// Methods trained at every size (the main curve).
    pub main_methods: Vec<Method>,
    /// Methods trained at `baseline_size` only.
    pub baselines: Vec<Method>,
    pub baseline_size: usize,
    /// Quadruples and seed of the tuning runs.
    pub tune_size: usize,
    pub tune_seed: u64,
    pub lr_grid: Vec<f64>,
    pub beta_grid: Vec<f64>,
    /// Methods whose beta is tuned too (the others use `beta_grid[0]`).
    pub beta_methods: Vec<Method>,
    /// A remedy studied as an option (never a default): CLO with DPO-Positive preference terms
    /// (`clo+dpop`), its weight chosen from this grid on the validation questions at CLO's tuned
    /// learning rate and beta, then trained at every size and seed. Empty: not studied.
    #[serde(default)]
    pub dpop_grid: Vec<f64>,
    /// A second remedy (`clo+nll`): CLO with more weight on its NLL term, the anchor of the
    /// chosen target response (as RPO anchors DPO with the chosen response's NLL), its lambda
    /// chosen from this grid like `dpop_grid`. Empty: not studied.
    #[serde(default)]
    pub nll_lambda_grid: Vec<f64>,
    pub epochs: usize,
    pub batch_size: usize,
    pub lambda: f64,
    /// Held-out questions per kind, for the test and for validation.
    pub per_kind: usize,
    pub max_new_tokens: usize,
    pub eval_batch: usize,
}

impl Default for StudyConfig {
    fn default() -> Self {
        Self {
            langs: Lang::TARGETS.to_vec(),
            sizes: vec![200, 400, 800, 1600, 3200],
            seeds: vec![0, 1, 2],
            main_methods: vec![Method::Sft, Method::Clo],
            baselines: vec![Method::SftEng, Method::SftTgt, Method::Dpo, Method::SftDpo],
            baseline_size: 800,
            tune_size: 800,
            tune_seed: 0,
            lr_grid: vec![1e-4, 3e-4, 1e-3, 3e-3],
            beta_grid: vec![0.1, 0.3, 1.0],
            beta_methods: vec![Method::Clo, Method::Dpo],
            dpop_grid: vec![5.0, 50.0],
            nll_lambda_grid: vec![0.8, 0.95],
            epochs: 1,
            batch_size: 8,
            lambda: 0.5,
            per_kind: 12,
            max_new_tokens: 40,
            eval_batch: 32,
        }
    }
}

impl StudyConfig {
    fn all_methods(&self) -> Vec<Method> {
        let mut out = self.main_methods.clone();
        for m in &self.baselines {
            if !out.contains(m) {
                out.push(*m);
            }
        }
        out
    }

    /// The (lr, beta) settings tried for `method`.
    pub fn grid(&self, method: Method) -> Vec<(f64, f64)> {
        let betas: &[f64] = if self.beta_methods.contains(&method) {
            &self.beta_grid
        } else {
            &self.beta_grid[..1]
        };
        self.lr_grid
            .iter()
            .flat_map(|lr| betas.iter().map(move |b| (*lr, *b)))
            .collect()
    }

    fn check(&self) -> Result<()> {
        let bad = |what: &str| Err(CoreError::Invalid(format!("study settings: {what}")));
        if self.langs.is_empty() || self.langs.contains(&Lang::En) {
            return bad("give one or more toy languages (vel, toy, zir)");
        }
        if self.sizes.is_empty() || self.sizes.contains(&0) || self.seeds.is_empty() {
            return bad("give sizes (> 0) and seeds");
        }
        if self.lr_grid.is_empty() || self.beta_grid.is_empty() {
            return bad("the learning-rate and beta grids need a value each");
        }
        if !self.main_methods.contains(&Method::Sft) {
            return bad("the main curve needs sft (win rates are against it)");
        }
        Ok(())
    }
}

/// How the model chosen by validation is scored: the mean of the share of target-language
/// validation questions answered right and in that language, and the English validation
/// accuracy. It reads validation answers only.
pub fn validation_score(r: &ToyResults, lang: Lang) -> f64 {
    let tgt = r.per_language[lang.code()].correct_in_language.accuracy;
    let en = r.per_language["en"].accuracy.accuracy;
    (tgt + en) / 2.0
}

/// What a tuning run tries and a tuned run trains with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub lr: f64,
    pub beta: f64,
    /// DPO-Positive weight (0: off).
    #[serde(default)]
    pub dpop: f64,
    /// The NLL weight when it is not the study's `lambda`.
    #[serde(default)]
    pub lambda: Option<f64>,
}

impl Setting {
    fn new(lr: f64, beta: f64) -> Self {
        Setting {
            lr,
            beta,
            dpop: 0.0,
            lambda: None,
        }
    }

    /// `lr1e-3-b0.1[-dpop5][-lambda0.8]`: the tuning run's directory tag.
    fn tag(&self) -> String {
        let mut tag = format!("lr{:e}-b{}", self.lr, self.beta);
        if self.dpop > 0.0 {
            let _ = write!(tag, "-dpop{}", self.dpop);
        }
        if let Some(l) = self.lambda {
            let _ = write!(tag, "-lambda{l}");
        }
        tag
    }
}

/// One tried setting and how it did on the validation questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    #[serde(flatten)]
    pub setting: Setting,
    pub validation_score: f64,
    pub best_val_loss: Option<f64>,
}

/// The tuning of one method for one language: the trials and the chosen setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    pub trials: Vec<Trial>,
    #[serde(flatten)]
    pub setting: Setting,
}

impl Tuning {
    /// The trials and the best of them ([`choose`]).
    fn of(trials: Vec<Trial>) -> Self {
        let setting = choose(&trials).expect("a grid of one or more").setting;
        Tuning { trials, setting }
    }
}

/// The name of the remedy in results: CLO with DPO-Positive terms.
pub const CLO_DPOP: &str = "clo+dpop";
/// The name of the remedy in results: CLO with a larger NLL weight.
pub const CLO_NLL: &str = "clo+nll";

/// The best trial: highest validation score, the first in grid order on a tie. Scores within
/// 1e-9 tie: they are shares of the same questions, and two sums of the same shares may differ
/// in the last bit.
pub fn choose(trials: &[Trial]) -> Option<&Trial> {
    trials
        .iter()
        .fold(None, |best: Option<&Trial>, t| match best {
            Some(b) if b.validation_score + 1e-9 >= t.validation_score => Some(b),
            _ => Some(t),
        })
}

/// How the base model treats each language before any adaptation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnglishCentric {
    /// Share of answers that are right (in any language).
    pub accuracy: f64,
    /// Share of answers in the prompt's language.
    pub fidelity: f64,
    /// Share of answers in English.
    pub answered_in_english: f64,
}

/// One system at one size in one language, over seeds: mean ± standard error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyRow {
    pub lang: Lang,
    pub method: String,
    pub size: Option<usize>,
    pub seeds: usize,
    pub lr: Option<f64>,
    pub beta: Option<f64>,
    pub tgt_fidelity: Estimate,
    pub tgt_accuracy: Estimate,
    pub tgt_correct_in_language: Estimate,
    /// Share of target-language answers that are a well-formed sentence of that language of
    /// the kind asked for (a pet for a pet question...), right or wrong: low when a model
    /// answers in the language but says something else (collapse onto a few statements).
    #[serde(default = "nan_estimate")]
    pub tgt_right_kind: Estimate,
    pub en_accuracy: Estimate,
    /// Win rate against SFT at the largest size (same seed), right-and-in-language per
    /// question, ties split.
    pub win_rate: Option<Estimate>,
    /// Mean over the last tenth of the steps, then over seeds, of the logged rewards (preference
    /// methods): `[en chosen, en rejected, target chosen, target rejected]`.
    pub rewards: Option<[f64; 4]>,
}

fn nan_estimate() -> Estimate {
    Estimate {
        value: f64::NAN,
        stderr: f64::NAN,
    }
}

/// Whether CLO beats SFT in one language at the small sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub lang: Lang,
    pub sizes: Vec<usize>,
    /// CLO's target right-and-in-language and fidelity above SFT's at every one of `sizes`.
    pub clo_beats_sft: bool,
    /// CLO's English accuracy at every size within 0.02 of the base model's.
    pub english_kept: bool,
}

/// `OUT/results.json` of the study.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyResults {
    pub config: StudyConfig,
    pub base_model: PathBuf,
    pub test_questions: usize,
    pub validation_questions: usize,
    pub english_centric: BTreeMap<Lang, EnglishCentric>,
    pub tuning: BTreeMap<Lang, BTreeMap<String, Tuning>>,
    pub rows: Vec<StudyRow>,
    pub verdicts: Vec<Verdict>,
    pub wall_s: f64,
}

/// Mean of the last tenth of the training steps' rewards in a run's `metrics.jsonl`.
fn final_rewards(run: &Path) -> Option<[f64; 4]> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).ok()?;
    let keys = [
        "reward_en_chosen",
        "reward_en_rejected",
        "reward_tgt_chosen",
        "reward_tgt_rejected",
    ];
    let rows: Vec<[f64; 4]> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let mut out = [0.0; 4];
            for (o, k) in out.iter_mut().zip(keys) {
                *o = v.get(k)?.as_f64()?;
            }
            Some(out)
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let tail = &rows[rows.len() - rows.len().div_ceil(10)..];
    let mut mean = [0.0; 4];
    for r in tail {
        for (m, x) in mean.iter_mut().zip(r) {
            *m += x / tail.len() as f64;
        }
    }
    Some(mean)
}

/// Runs the study from the toy model in `base` into `out`.
pub fn study(
    base: &Path,
    out: &Path,
    config: &StudyConfig,
    device: &Device,
    progress: &mut dyn FnMut(QuickProgress),
) -> Result<StudyResults> {
    let started = Instant::now();
    config.check()?;
    let world = read_world(base)?;
    std::fs::create_dir_all(out).map_err(|e| CoreError::io("create", out, e))?;
    let max_size = *config
        .sizes
        .iter()
        .chain([&config.tune_size, &config.baseline_size])
        .max()
        .expect("non-empty");

    // Data: per language and seed, the largest set; smaller sizes are its prefixes. The
    // questions asked do not depend on the language, so the held-out questions are common.
    let data_dir = out.join("data");
    let mut seeds = config.seeds.clone();
    if !seeds.contains(&config.tune_seed) {
        seeds.push(config.tune_seed);
    }
    let mut all_train = Vec::new();
    let mut data: BTreeMap<(Lang, usize, u64), PathBuf> = BTreeMap::new();
    for &lang in &config.langs {
        for &seed in &seeds {
            let quads = quadruples(&world, lang, max_size, seed);
            let mut sizes = config.sizes.clone();
            sizes.extend([config.tune_size, config.baseline_size]);
            sizes.sort();
            sizes.dedup();
            for n in sizes {
                let path = data_dir
                    .join(lang.code())
                    .join(format!("quads-n{n}-s{seed}.jsonl"));
                if !path.exists() {
                    write_atomically(&path, quadruples_jsonl(&quads[..n]).as_bytes())?;
                }
                data.insert((lang, n, seed), path);
            }
            if lang == config.langs[0] {
                all_train.extend(quads);
            }
        }
    }
    let test = held_out_questions(&world, Split::Test, config.per_kind, world.seed, &all_train);
    let val = held_out_questions(
        &world,
        Split::Validation,
        config.per_kind,
        world.seed,
        &all_train,
    );
    write_json_atomically(&data_dir.join("test.json"), &test)?;
    write_json_atomically(&data_dir.join("validation.json"), &val)?;

    let lab = Lab {
        base,
        device,
        cache: out.join("cache"),
        max_new_tokens: config.max_new_tokens,
        eval_batch: config.eval_batch,
    };

    // 1. The base model in every language.
    let mut all_langs = vec![Lang::En];
    all_langs.extend(&config.langs);
    let base_dir = out.join("base-eval");
    let base_results = lab.evaluate(
        "base",
        &|| Pretrained::load(base, device),
        &base_dir,
        &test,
        &all_langs,
        progress,
    )?;
    let base_items = read_items(&base_dir)?;
    let english_centric = english_centric(&base_items, &all_langs);

    // 2. Tuning on the validation questions.
    let spec =
        |dir: PathBuf, lang: Lang, method: Method, n: usize, seed: u64, set: Setting| RunSpec {
            dir,
            data: data[&(lang, n, seed)].clone(),
            method,
            seed,
            epochs: config.epochs,
            batch_size: config.batch_size,
            lr: set.lr,
            beta: set.beta,
            lambda: set.lambda.unwrap_or(config.lambda),
            dpop: set.dpop,
        };
    let tune_dir = |lang: Lang, label: &str, set: &Setting| {
        out.join("tune").join(lang.code()).join(format!(
            "{}-{}",
            label.replace('+', "-"),
            set.tag()
        ))
    };
    let mut tuning: BTreeMap<Lang, BTreeMap<String, Tuning>> = BTreeMap::new();
    // One tuning run: trained at the tuning size and seed, answers the validation questions.
    let trial = |lang: Lang,
                 label: &str,
                 method: Method,
                 setting: Setting,
                 progress: &mut dyn FnMut(QuickProgress)|
     -> Result<Trial> {
        let name = format!("{lang} {label} {}", setting.tag());
        let run = spec(
            tune_dir(lang, label, &setting),
            lang,
            method,
            config.tune_size,
            config.tune_seed,
            setting,
        );
        let summary = lab.train(&name, &run, progress)?;
        let r = lab.evaluate(
            &format!("{name} (validation)"),
            &|| lab.load_best(&run),
            &run.dir.join("val-eval"),
            &val,
            &[Lang::En, lang],
            progress,
        )?;
        Ok(Trial {
            setting,
            validation_score: validation_score(&r, lang),
            best_val_loss: summary.best_val_loss,
        })
    };
    for &lang in &config.langs {
        let mut tuned = BTreeMap::new();
        for method in config.all_methods() {
            let trials = config
                .grid(method)
                .into_iter()
                .map(|(lr, beta)| {
                    trial(
                        lang,
                        method.name(),
                        method,
                        Setting::new(lr, beta),
                        progress,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            tuned.insert(method.name().to_string(), Tuning::of(trials));
        }
        // The remedies, at CLO's tuned learning rate and beta: DPO-Positive weights, and
        // larger NLL weights.
        let remedies: [(&str, &[f64]); 2] = [
            (CLO_DPOP, &config.dpop_grid),
            (CLO_NLL, &config.nll_lambda_grid),
        ];
        for (label, grid) in remedies {
            if grid.is_empty() {
                continue;
            }
            let clo = tuned
                .get(Method::Clo.name())
                .map(|t: &Tuning| t.setting)
                .ok_or_else(|| {
                    CoreError::Invalid(format!("study settings: the {label} remedy needs clo"))
                })?;
            let trials = grid
                .iter()
                .map(|&w| {
                    let set = if label == CLO_DPOP {
                        Setting { dpop: w, ..clo }
                    } else {
                        Setting {
                            lambda: Some(w),
                            ..clo
                        }
                    };
                    trial(lang, label, Method::Clo, set, progress)
                })
                .collect::<Result<Vec<_>>>()?;
            tuned.insert(label.to_string(), Tuning::of(trials));
        }
        tuning.insert(lang, tuned);
        write_json_atomically(&out.join("tuning.json"), &tuning)?;
    }

    // 3-4. The main curve and the baselines, each at its tuned setting, on the test questions.
    let largest = *config.sizes.iter().max().expect("non-empty");
    // (language, label, method, size): the label names the remedy apart from its method.
    let mut jobs: Vec<(Lang, String, Method, usize)> = Vec::new();
    for &lang in &config.langs {
        for &n in &config.sizes {
            for &m in &config.main_methods {
                jobs.push((lang, m.name().to_string(), m, n));
            }
            if !config.dpop_grid.is_empty() {
                jobs.push((lang, CLO_DPOP.to_string(), Method::Clo, n));
            }
            if !config.nll_lambda_grid.is_empty() {
                jobs.push((lang, CLO_NLL.to_string(), Method::Clo, n));
            }
        }
        for &m in &config.baselines {
            if !config.main_methods.contains(&m) {
                jobs.push((lang, m.name().to_string(), m, config.baseline_size));
            }
        }
    }
    // Per (lang, label, size): per seed, the results, answers and run directory.
    type Done = Vec<(ToyResults, Vec<ToyItem>, PathBuf)>;
    let mut done: BTreeMap<(Lang, String, usize), Done> = BTreeMap::new();
    for &seed in &config.seeds {
        for (lang, label, method, n) in &jobs {
            let (lang, method, n) = (*lang, *method, *n);
            let t = &tuning[&lang][label.as_str()];
            let name = format!("{}-n{n}-s{seed}", label.replace('+', "-"));
            // The tuning run of the chosen setting is this very run: it is reused.
            let dir = if n == config.tune_size && seed == config.tune_seed {
                tune_dir(lang, label, &t.setting)
            } else {
                out.join("runs").join(lang.code()).join(&name)
            };
            let run = spec(dir, lang, method, n, seed, t.setting);
            lab.train(&format!("{lang} {name}"), &run, progress)?;
            let eval_dir = run.dir.join("eval");
            let r = lab.evaluate(
                &format!("{lang} {name}"),
                &|| lab.load_best(&run),
                &eval_dir,
                &test,
                &[Lang::En, lang],
                progress,
            )?;
            done.entry((lang, label.clone(), n)).or_default().push((
                r,
                read_items(&eval_dir)?,
                run.dir.clone(),
            ));
        }
    }

    // 5. Rows, win rates, rewards, verdicts.
    let mut rows = Vec::new();
    for &lang in &config.langs {
        let base_only = ToyResults {
            task: "toy".into(),
            model: base.to_path_buf(),
            per_language: base_results
                .per_language
                .iter()
                .filter(|(l, _)| *l == "en" || *l == lang.code())
                .map(|(l, s)| (l.clone(), s.clone()))
                .collect(),
        };
        rows.push(study_row(
            lang,
            "base",
            None,
            None,
            &[(base_only, base_items.clone(), PathBuf::new())],
            None,
        ));
        let reference = done.get(&(lang, Method::Sft.name().to_string(), largest));
        for ((l, method, n), runs) in &done {
            if *l != lang {
                continue;
            }
            let t = &tuning[&lang][method.as_str()];
            rows.push(study_row(lang, method, Some(*n), Some(t), runs, reference));
        }
    }
    let verdicts = config
        .langs
        .iter()
        .map(|&lang| verdict(lang, &rows, &config.sizes))
        .collect();
    let results = StudyResults {
        config: config.clone(),
        base_model: base.to_path_buf(),
        test_questions: test.len(),
        validation_questions: val.len(),
        english_centric,
        tuning,
        rows,
        verdicts,
        wall_s: started.elapsed().as_secs_f64(),
    };
    write_json_atomically(&out.join("results.json"), &results)?;
    for (name, text) in render_study(&results) {
        write_atomically(&out.join(name), text.as_bytes())?;
    }
    Ok(results)
}

#[cfg(test)]
mod tests;
