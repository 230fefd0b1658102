//! Reading English SFT data: OpenAssistant exports (message trees or flat messages), Alpaca
//! (JSON array or JSONL), ShareGPT / `messages` JSONL and plain `{"prompt", "response"}` JSONL.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CoreError, Result};

/// Input formats of `clo prepare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Auto,
    Oasst,
    Alpaca,
    Sharegpt,
    Pairs,
}

impl std::str::FromStr for Format {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "auto" => Format::Auto,
            "oasst" => Format::Oasst,
            "alpaca" => Format::Alpaca,
            "sharegpt" => Format::Sharegpt,
            "pairs" => Format::Pairs,
            other => {
                return Err(CoreError::Invalid(format!(
                    "unknown format `{other}`; choose auto, oasst, alpaca, sharegpt or pairs"
                )));
            }
        })
    }
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Oasst => "oasst",
            Format::Alpaca => "alpaca",
            Format::Sharegpt => "sharegpt",
            Format::Pairs => "pairs",
        }
    }
}

/// One English instruction with its response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourcePair {
    pub source_id: String,
    pub prompt: String,
    pub response: String,
    /// Translations the input already carries (`x_tgt`/`y_tgt`, or `prompt_<lang>` and
    /// `response_<lang>`), for the `columns` translator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given: Option<(String, String)>,
}

/// What ingestion found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestStats {
    pub format: String,
    pub records: usize,
    pub pairs: usize,
    /// Malformed records skipped with `--skip-bad` (line: reason).
    pub skipped_bad: Vec<String>,
    /// OASST: prompts dropped because they are not English, or have no assistant reply.
    pub not_english: usize,
    pub no_reply: usize,
}

const HINT: &str = "formats: oasst (message trees, or messages with message_id/parent_id/role/rank/lang/text), alpaca (instruction/input/output), sharegpt (conversations [{from, value}] or messages [{role, content}]), pairs (prompt/response)";

struct Record {
    line: usize,
    value: Value,
}

/// Parses the file into records: a JSON array (Alpaca JSON) or one JSON value per line.
fn records(path: &Path, skip_bad: bool, stats: &mut IngestStats) -> Result<Vec<Record>> {
    if !path.exists() {
        return Err(CoreError::MissingFile {
            path: path.to_path_buf(),
            what: "input data",
        });
    }
    let bad = |line: usize, message: String| CoreError::Input {
        path: path.to_path_buf(),
        line,
        message,
        hint: HINT,
    };
    // Alpaca JSON (one array) is parsed whole; JSON Lines are read one bounded line at a time.
    let first = {
        use std::io::Read;
        let mut head = [0u8; 4096];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|e| CoreError::io("read", path, e))?;
        head[..n].iter().copied().find(|b| !b.is_ascii_whitespace())
    };
    if first == Some(b'[') {
        let bytes = std::fs::read(path).map_err(|e| CoreError::io("read", path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() + 1;
            bad(
                line,
                format!("not valid UTF-8 (byte {at}); convert the file to UTF-8"),
            )
        })?;
        let v: Vec<Value> =
            serde_json::from_str(&text).map_err(|e| bad(e.line(), e.to_string()))?;
        return Ok(v
            .into_iter()
            .enumerate()
            .map(|(i, value)| Record { line: i + 1, value })
            .collect());
    }
    let mut lines = crate::data::jsonl::Lines::open(path, "input data")?;
    let mut out = Vec::new();
    let mut any = false;
    while let Some(next) = lines.next_line() {
        let (n, line) = next?;
        if line.trim().is_empty() {
            continue;
        }
        any = true;
        match serde_json::from_str::<Value>(line) {
            Ok(value) => out.push(Record { line: n, value }),
            Err(e) if skip_bad => stats.skipped_bad.push(format!("{n}: {e}")),
            Err(e) => {
                return Err(bad(
                    n,
                    format!("{e} (the `skip_bad` setting skips malformed lines)"),
                ));
            }
        }
    }
    if !any {
        return Err(bad(1, "the file is empty".into()));
    }
    Ok(out)
}

fn detect(v: &Value) -> Option<Format> {
    let has = |k: &str| v.get(k).is_some();
    if has("message_id") || (has("prompt") && v["prompt"].is_object()) || has("message_tree_id") {
        Some(Format::Oasst)
    } else if has("instruction") && has("output") {
        Some(Format::Alpaca)
    } else if has("conversations") || has("messages") {
        Some(Format::Sharegpt)
    } else if has("prompt") && has("response") {
        Some(Format::Pairs)
    } else {
        None
    }
}

fn text(v: &Value, key: &str) -> std::result::Result<String, String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("field `{key}` must be a string, not {other}")),
        None => Err(format!("missing field `{key}`")),
    }
}

fn given(v: &Value, tgt: &str) -> Option<(String, String)> {
    let pick = |keys: [String; 2]| {
        keys.iter()
            .find_map(|k| v.get(k).and_then(Value::as_str).map(str::to_string))
    };
    Some((
        pick(["x_tgt".into(), format!("prompt_{tgt}")])?,
        pick(["y_tgt".into(), format!("response_{tgt}")])?,
    ))
}

fn alpaca(v: &Value, line: usize, tgt: &str) -> std::result::Result<SourcePair, String> {
    let instruction = text(v, "instruction")?;
    let input = match v.get("input") {
        None | Some(Value::Null) => String::new(),
        Some(_) => text(v, "input")?,
    };
    let prompt = if input.trim().is_empty() {
        instruction
    } else {
        format!("{instruction}\n\n{input}")
    };
    Ok(SourcePair {
        source_id: crate::data::jsonl::record_id(v, line),
        prompt,
        response: text(v, "output")?,
        given: given(v, tgt),
    })
}

fn pairs(v: &Value, line: usize, tgt: &str) -> std::result::Result<SourcePair, String> {
    Ok(SourcePair {
        source_id: crate::data::jsonl::record_id(v, line),
        prompt: text(v, "prompt")?,
        response: text(v, "response")?,
        given: given(v, tgt),
    })
}

/// The first user turn and the assistant turn after it.
fn sharegpt(v: &Value, line: usize, tgt: &str) -> std::result::Result<SourcePair, String> {
    let (turns, role_key, text_key) = match (v.get("conversations"), v.get("messages")) {
        (Some(Value::Array(t)), _) => (t, "from", "value"),
        (_, Some(Value::Array(t))) => (t, "role", "content"),
        _ => return Err("missing field `conversations` (or `messages`): a list of turns".into()),
    };
    let role = |t: &Value| {
        t.get(role_key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_lowercase()
    };
    let user = turns
        .iter()
        .position(|t| matches!(role(t).as_str(), "human" | "user"))
        .ok_or("no user turn")?;
    let reply = turns
        .get(user + 1)
        .filter(|t| matches!(role(t).as_str(), "gpt" | "assistant" | "chatgpt" | "bot"))
        .ok_or("the first user turn has no assistant reply after it")?;
    Ok(SourcePair {
        source_id: crate::data::jsonl::record_id(v, line),
        prompt: text(&turns[user], text_key)?,
        response: text(reply, text_key)?,
        given: given(v, tgt),
    })
}

/// The best-ranked (lowest `rank`, unranked last, then first seen) assistant reply.
fn best_reply<'a>(replies: impl Iterator<Item = &'a Value>) -> Option<&'a Value> {
    replies
        .filter(|r| r.get("role").and_then(Value::as_str) == Some("assistant"))
        .filter(|r| r.get("deleted").and_then(Value::as_bool) != Some(true))
        .enumerate()
        .min_by_key(|(i, r)| {
            (
                r.get("rank").and_then(Value::as_u64).unwrap_or(u64::MAX),
                *i,
            )
        })
        .map(|(_, r)| r)
}

/// OASST: English prompts with their top-ranked first assistant reply (the paper's selection).
fn oasst(
    recs: &[Record],
    stats: &mut IngestStats,
    bad: &dyn Fn(usize, String) -> CoreError,
) -> Result<Vec<SourcePair>> {
    let mut out = Vec::new();
    let english = |m: &Value| m.get("lang").and_then(Value::as_str) == Some("en");
    let mut push =
        |root: &Value, reply: Option<&Value>, line: usize, stats: &mut IngestStats| -> Result<()> {
            if !english(root) {
                stats.not_english += 1;
                return Ok(());
            }
            let Some(reply) = reply else {
                stats.no_reply += 1;
                return Ok(());
            };
            let t = |m: &Value| text(m, "text").map_err(|e| bad(line, e));
            out.push(SourcePair {
                source_id: root
                    .get("message_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("line-{line}")),
                prompt: t(root)?,
                response: t(reply)?,
                given: None,
            });
            Ok(())
        };
    if recs
        .iter()
        .any(|r| r.value.get("message_id").is_some() && r.value.get("replies").is_none())
    {
        // Flat messages: roots are prompter messages without a parent.
        let mut children: HashMap<&str, Vec<&Value>> = HashMap::new();
        for r in recs {
            if let Some(p) = r.value.get("parent_id").and_then(Value::as_str) {
                children.entry(p).or_default().push(&r.value);
            }
        }
        for r in recs {
            let v = &r.value;
            let id = v
                .get("message_id")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(r.line, "missing field `message_id`".into()))?;
            let is_root = v.get("parent_id").is_none_or(Value::is_null)
                && v.get("role").and_then(Value::as_str) == Some("prompter");
            if is_root && v.get("deleted").and_then(Value::as_bool) != Some(true) {
                let reply = best_reply(children.get(id).into_iter().flatten().copied());
                push(v, reply, r.line, stats)?;
            }
        }
    } else {
        // Message trees: {"prompt": {message, "replies": [...]}}.
        for r in recs {
            let root = r
                .value
                .get("prompt")
                .filter(|p| p.is_object())
                .ok_or_else(|| {
                    bad(
                        r.line,
                        "an OASST tree needs `prompt`: the root message with its `replies`".into(),
                    )
                })?;
            let replies = root.get("replies").and_then(Value::as_array);
            push(
                root,
                best_reply(replies.into_iter().flatten()),
                r.line,
                stats,
            )?;
        }
    }
    Ok(out)
}

/// Reads English instruction pairs from `path`. `tgt` names the target language, for inputs
/// that already carry translations.
pub fn ingest(
    path: &Path,
    format: Format,
    tgt: &str,
    skip_bad: bool,
) -> Result<(Vec<SourcePair>, IngestStats)> {
    let mut stats = IngestStats::default();
    let recs = records(path, skip_bad, &mut stats)?;
    let bad = |line: usize, message: String| CoreError::Input {
        path: path.to_path_buf(),
        line,
        message,
        hint: HINT,
    };
    let first = recs.first().ok_or_else(|| bad(1, "no records".into()))?;
    let format = match format {
        Format::Auto => detect(&first.value).ok_or_else(|| {
            bad(
                first.line,
                "cannot tell the format from this record's fields; name it with the `format` setting".into(),
            )
        })?,
        f => f,
    };
    stats.format = format.name().into();
    stats.records = recs.len();
    let out = match format {
        Format::Oasst => oasst(&recs, &mut stats, &bad)?,
        _ => {
            let mut out = Vec::with_capacity(recs.len());
            for r in &recs {
                let parsed = match format {
                    Format::Alpaca => alpaca(&r.value, r.line, tgt),
                    Format::Sharegpt => sharegpt(&r.value, r.line, tgt),
                    _ => pairs(&r.value, r.line, tgt),
                };
                match parsed {
                    Ok(p) => out.push(p),
                    Err(e) if skip_bad => stats.skipped_bad.push(format!("{}: {e}", r.line)),
                    Err(e) => {
                        return Err(bad(
                            r.line,
                            format!(
                                "{e} (format {}; the `skip_bad` setting skips such records)",
                                format.name()
                            ),
                        ));
                    }
                }
            }
            out
        }
    };
    let mut seen = HashMap::new();
    for (i, p) in out.iter().enumerate() {
        if let Some(j) = seen.insert(p.source_id.clone(), i) {
            return Err(CoreError::Invalid(format!(
                "{}: records {} and {} have the same id `{}`; ids must be unique",
                path.display(),
                j + 1,
                i + 1,
                p.source_id
            )));
        }
    }
    stats.pairs = out.len();
    Ok((out, stats))
}
