//! `clo prepare`: English SFT data -> checked translations -> quadruples (method.md section 2).
//!
//! Every finished record (a quadruple, or a rejection with its reason) is appended to a journal
//! beside the output and fsynced before the next, so a killed run continues where it stopped
//! without translating a record twice. When every record is done, the outputs are written
//! atomically from the journal: `OUT` (all quadruples, source order), `OUT.train.jsonl` and
//! `OUT.val.jsonl` (a split by a hash of each source id, so it does not depend on the run), the
//! nested subsets `OUT.subset-N.jsonl` of the train split, and `OUT.summary.json`.

pub mod ingest;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::{CoreError, Result};
use crate::eval::langid::LanguageIdentifier;
use crate::fsutil::{write_atomically, write_json_atomically};
pub use ingest::{Format, IngestStats, SourcePair, ingest};

/// A translation of one pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Translated {
    pub prompt: String,
    pub response: String,
}

/// Translates English pairs into the target language. Implementations: an OpenAI-compatible
/// endpoint (`openai:`), translations already in the input (`columns`); a local seq2seq model
/// (`model:DIR`) slots in here too.
pub trait Translator: Send + Sync {
    /// The spec, recorded as provenance.
    fn spec(&self) -> String;
    fn translate(&self, pair: &SourcePair, src: &str, tgt: &str) -> Result<Translated>;
    /// Refuses inputs this translator cannot work on, before anything is written.
    fn validate(&self, _pairs: &[SourcePair], _tgt: &str) -> Result<()> {
        Ok(())
    }
}

/// `columns`: the input already holds the target texts.
pub struct Columns;

impl Translator for Columns {
    fn spec(&self) -> String {
        "columns".into()
    }

    fn validate(&self, pairs: &[SourcePair], tgt: &str) -> Result<()> {
        match pairs.iter().find(|p| p.given.is_none()) {
            Some(p) => self.translate(p, "", tgt).map(|_| ()),
            None => Ok(()),
        }
    }

    fn translate(&self, pair: &SourcePair, _src: &str, tgt: &str) -> Result<Translated> {
        let (prompt, response) = pair.given.clone().ok_or_else(|| {
            CoreError::Invalid(format!(
                "record `{}` has no target columns: the columns translator needs `x_tgt`/`y_tgt` or `prompt_{tgt}`/`response_{tgt}` in every record",
                pair.source_id
            ))
        })?;
        Ok(Translated { prompt, response })
    }
}

/// The English name of a language code, for translation prompts.
pub fn language_name(code: &str) -> String {
    crate::eval::lang::LANGUAGES
        .iter()
        .find(|l| l.code == code)
        .map(|l| l.name.to_string())
        .unwrap_or_else(|| format!("the language with ISO 639-1 code `{code}`"))
}

#[cfg(feature = "net")]
pub use openai_translator::OpenAiTranslator;

#[cfg(feature = "net")]
mod openai_translator {
    use super::*;
    use crate::openai::{ChatClient, ChatMessage};

    /// `openai:BASE_URL#MODEL`: any OpenAI-compatible chat endpoint, one request per text.
    pub struct OpenAiTranslator {
        pub client: ChatClient,
    }

    /// The system prompt of a translation request.
    pub fn system_prompt(src: &str, tgt: &str) -> String {
        format!(
            "You are a professional translator. Translate the user's message from {} into {}. Reply with the translation only: no notes, no quotes, no explanations. Keep the formatting, code, names and numbers.",
            language_name(src),
            language_name(tgt)
        )
    }

    impl OpenAiTranslator {
        fn one(&self, text: &str, src: &str, tgt: &str) -> Result<String> {
            let messages = [
                ChatMessage::system(system_prompt(src, tgt)),
                ChatMessage::user(text),
            ];
            Ok(self.client.chat(&messages, 0.0, None)?.trim().to_string())
        }
    }

    impl Translator for OpenAiTranslator {
        fn spec(&self) -> String {
            self.client.spec().to_spec()
        }

        fn translate(&self, pair: &SourcePair, src: &str, tgt: &str) -> Result<Translated> {
            Ok(Translated {
                prompt: self.one(&pair.prompt, src, tgt)?,
                response: self.one(&pair.response, src, tgt)?,
            })
        }
    }
}

/// Bounds of the target/source length ratio (in characters) outside which a translation is an
/// outlier; texts shorter than `min_chars` are not judged by length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checks {
    pub min_ratio: f64,
    pub max_ratio: f64,
    pub min_chars: usize,
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            min_ratio: 1.0 / 3.0,
            max_ratio: 3.0,
            min_chars: 20,
        }
    }
}

/// Why a translation is refused, or `None` when it passes: empty, an unchanged copy of the
/// source, identified as another language than the target, or a length-ratio outlier.
pub fn check(
    pair: &SourcePair,
    t: &Translated,
    tgt: &str,
    checks: &Checks,
    langid: Option<&dyn LanguageIdentifier>,
) -> Option<String> {
    for (what, src, out) in [
        ("prompt", &pair.prompt, &t.prompt),
        ("response", &pair.response, &t.response),
    ] {
        let (src, out) = (src.trim(), out.trim());
        if out.is_empty() {
            return Some(format!("empty: the {what}'s translation is empty"));
        }
        let words = src
            .split_whitespace()
            .filter(|w| w.chars().any(char::is_alphabetic))
            .count();
        if out == src && words >= 2 {
            return Some(format!(
                "unchanged: the {what}'s translation is a copy of the source"
            ));
        }
        if let Some(id) = langid {
            let out_words = out
                .split_whitespace()
                .filter(|w| w.chars().any(char::is_alphabetic))
                .count();
            if out_words >= 3
                && let Some(lang) = id.detect(out)
                && lang != tgt
            {
                return Some(format!(
                    "language: the {what}'s translation is identified as `{lang}`, not `{tgt}`"
                ));
            }
        }
        let (a, b) = (src.chars().count(), out.chars().count());
        if a >= checks.min_chars {
            let ratio = b as f64 / a as f64;
            if ratio < checks.min_ratio || ratio > checks.max_ratio {
                return Some(format!(
                    "length: the {what}'s translation is {ratio:.2}x the source's length (allowed {:.2}-{:.2})",
                    checks.min_ratio, checks.max_ratio
                ));
            }
        }
    }
    None
}

/// Settings of a prepare run; a resumed run must have the same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareConfig {
    pub input: PathBuf,
    pub format: Format,
    pub src_lang: String,
    pub tgt_lang: String,
    pub translator: String,
    pub limit: Option<usize>,
    pub subsets: Vec<usize>,
    pub val_fraction: f64,
    pub seed: u64,
    pub checks: Checks,
    pub skip_bad: bool,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum Entry {
    Ok {
        index: usize,
        quad: Value,
    },
    Rejected {
        index: usize,
        source_id: String,
        reason: String,
    },
}

impl Entry {
    fn index(&self) -> usize {
        match self {
            Entry::Ok { index, .. } | Entry::Rejected { index, .. } => *index,
        }
    }
}

/// Where a prepare run writes.
pub fn journal_path(out: &Path) -> PathBuf {
    sibling(out, "journal.jsonl")
}

/// `OUT` with its `.jsonl` extension replaced by `.{suffix}`.
pub fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    out.with_file_name(format!("{stem}.{suffix}"))
}

/// Reads the journal, dropping a torn last line (a kill mid-write), and checks its header.
fn read_journal(path: &Path, config: &PrepareConfig) -> Result<Vec<Entry>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(Vec::new());
    };
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    if lines.last().is_some_and(|l| !l.ends_with('\n')) {
        lines.pop(); // torn
        let keep: usize = lines.iter().map(|l| l.len()).sum();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| CoreError::io("open", path, e))?;
        f.set_len(keep as u64)
            .map_err(|e| CoreError::io("truncate", path, e))?;
    }
    let Some(header) = lines.first() else {
        return Ok(Vec::new());
    };
    let bad = |line: usize, message: String| CoreError::Input {
        path: path.to_path_buf(),
        line,
        message,
        hint: "the journal of an interrupted `clo prepare`; delete it to start over",
    };
    let header: Value = serde_json::from_str(header).map_err(|e| bad(1, e.to_string()))?;
    let previous: PrepareConfig =
        serde_json::from_value(header["config"].clone()).map_err(|e| bad(1, e.to_string()))?;
    if &previous != config {
        return Err(CoreError::Invalid(format!(
            "{} belongs to a prepare run with other settings ({}); rerun with the same settings to resume, or delete it to start over",
            path.display(),
            serde_json::to_string(&previous).unwrap_or_default()
        )));
    }
    lines[1..]
        .iter()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| bad(i + 2, e.to_string())))
        .collect()
}

/// Counts of a finished prepare, written to `OUT.summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareSummary {
    pub config: PrepareConfig,
    pub ingest: IngestStats,
    /// Pairs after `--limit`.
    pub selected: usize,
    pub kept: usize,
    pub rejected: usize,
    /// Rejections by kind (`empty`, `unchanged`, `language`, `length`).
    pub rejected_by: BTreeMap<String, usize>,
    pub train: usize,
    pub val: usize,
    /// Subset size -> file.
    pub subsets: BTreeMap<usize, PathBuf>,
    /// Records translated in this invocation (the rest came from the journal).
    pub translated_now: usize,
    pub language_check: bool,
}

/// A number from a string, stable across runs and platforms.
fn hash64(text: &str) -> u64 {
    let h = Sha256::digest(text.as_bytes());
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

/// Who does the work of [`prepare`]: the translator, the language identifier of the checks
/// (none: the language check is skipped), and how many records are translated at once.
#[derive(Clone, Copy)]
pub struct Workers<'a> {
    pub translator: &'a dyn Translator,
    pub langid: Option<&'a dyn LanguageIdentifier>,
    pub concurrency: usize,
}

/// Translates (resuming from the journal), checks and writes the outputs.
/// `on_done(n)` reports records finished in this invocation.
pub fn prepare(
    out: &Path,
    config: &PrepareConfig,
    (pairs, ingest_stats): (&[SourcePair], IngestStats),
    workers: Workers<'_>,
    on_done: &(dyn Fn(usize) + Sync),
) -> Result<PrepareSummary> {
    let Workers {
        translator,
        langid,
        concurrency,
    } = workers;
    translator.validate(pairs, &config.tgt_lang)?;
    let journal = journal_path(out);
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io("create", dir, e))?;
    }
    let mut entries = read_journal(&journal, config)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&journal)
        .map_err(|e| CoreError::io("open", &journal, e))?;
    if entries.is_empty() && file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        let header = json!({"clo_prepare_journal": 1, "config": config});
        writeln!(file, "{header}")
            .and_then(|_| file.sync_all())
            .map_err(|e| CoreError::io("write", &journal, e))?;
    }
    let done: std::collections::HashSet<usize> = entries.iter().map(Entry::index).collect();
    let todo: Vec<usize> = (0..pairs.len()).filter(|i| !done.contains(i)).collect();
    tracing::info!(done = done.len(), todo = todo.len(), "prepare");
    let file = Mutex::new(file);
    let write_error: Mutex<Option<CoreError>> = Mutex::new(None);
    // After a failure (the endpoint gave up), the remaining records are left for the rerun.
    let failed = std::sync::atomic::AtomicBool::new(false);
    let results = crate::parallel::map_concurrent(
        &todo,
        concurrency,
        |&i| -> Result<Option<Entry>> {
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(None);
            }
            let pair = &pairs[i];
            let t = translator
                .translate(pair, &config.src_lang, &config.tgt_lang)
                .inspect_err(|_| failed.store(true, std::sync::atomic::Ordering::Relaxed))?;
            Ok(Some(
                match check(pair, &t, &config.tgt_lang, &config.checks, langid) {
                    Some(reason) => Entry::Rejected {
                        index: i,
                        source_id: pair.source_id.clone(),
                        reason,
                    },
                    None => Entry::Ok {
                        index: i,
                        quad: json!({
                            "id": pair.source_id,
                            "lang": config.tgt_lang,
                            "x_en": pair.prompt,
                            "y_en": pair.response,
                            "x_tgt": t.prompt,
                            "y_tgt": t.response,
                            "source_id": pair.source_id,
                            "translator": translator.spec(),
                            "src_lang": config.src_lang,
                            "tgt_lang": config.tgt_lang,
                        }),
                    },
                },
            ))
        },
        |r| {
            if let Ok(Some(entry)) = r {
                let line = serde_json::to_string(entry).expect("entries serialize");
                let mut f = file.lock().expect("journal lock");
                if let Err(e) = writeln!(f, "{line}").and_then(|_| f.sync_data()) {
                    write_error
                        .lock()
                        .expect("error slot")
                        .get_or_insert(CoreError::io("append to", &journal, e));
                }
                on_done(1);
            }
        },
    );
    if let Some(e) = write_error.into_inner().expect("error slot") {
        return Err(e);
    }
    let translated_now = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(Some(e)) => entries.push(e),
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        // Finished records are in the journal; a rerun continues with the rest.
        return Err(e);
    }
    finish(
        out,
        config,
        ingest_stats,
        pairs.len(),
        entries,
        translated_now,
        langid.is_some(),
    )
}

fn jsonl(values: &[&Value]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

fn finish(
    out: &Path,
    config: &PrepareConfig,
    ingest: IngestStats,
    selected: usize,
    mut entries: Vec<Entry>,
    translated_now: usize,
    language_check: bool,
) -> Result<PrepareSummary> {
    entries.sort_by_key(Entry::index);
    entries.dedup_by_key(|e| e.index());
    let mut quads: Vec<&Value> = Vec::new();
    let mut rejected_by = BTreeMap::new();
    for e in &entries {
        match e {
            Entry::Ok { quad, .. } => quads.push(quad),
            Entry::Rejected { reason, .. } => {
                let kind = reason.split(':').next().unwrap_or("other").to_string();
                *rejected_by.entry(kind).or_insert(0) += 1;
            }
        }
    }
    let id = |q: &&Value| q["source_id"].as_str().unwrap_or_default().to_string();
    let (val, train): (Vec<&Value>, Vec<&Value>) = quads.iter().partition(|q| {
        (hash64(&format!("split:{}", id(q))) as f64 / 2f64.powi(64)) < config.val_fraction
    });
    let mut shuffled = train.clone();
    shuffled.sort_by_cached_key(|q| hash64(&format!("{}:{}", config.seed, id(q))));
    let mut subsets = BTreeMap::new();
    for &n in &config.subsets {
        if n > shuffled.len() {
            tracing::warn!(
                n,
                train = shuffled.len(),
                "subset larger than the train split; skipped"
            );
            continue;
        }
        let path = sibling(out, &format!("subset-{n}.jsonl"));
        write_atomically(&path, jsonl(&shuffled[..n]).as_bytes())?;
        subsets.insert(n, path);
    }
    write_atomically(&sibling(out, "train.jsonl"), jsonl(&train).as_bytes())?;
    write_atomically(&sibling(out, "val.jsonl"), jsonl(&val).as_bytes())?;
    write_atomically(out, jsonl(&quads).as_bytes())?;
    let rejected = entries.len() - quads.len();
    let rejections: Vec<Value> = entries
        .iter()
        .filter_map(|e| match e {
            Entry::Rejected {
                source_id, reason, ..
            } => Some(json!({"source_id": source_id, "reason": reason})),
            _ => None,
        })
        .collect();
    write_atomically(
        &sibling(out, "rejected.jsonl"),
        jsonl(&rejections.iter().collect::<Vec<_>>()).as_bytes(),
    )?;
    let summary = PrepareSummary {
        config: config.clone(),
        ingest,
        selected,
        kept: quads.len(),
        rejected,
        rejected_by,
        train: train.len(),
        val: val.len(),
        subsets,
        translated_now,
        language_check,
    };
    write_json_atomically(&sibling(out, "summary.json"), &summary)?;
    Ok(summary)
}
