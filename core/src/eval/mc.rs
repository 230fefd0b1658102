//! Multiple choice by log-likelihood (BELEBELE style, method.md section 7): each record's prompt
//! is written with its language's labels (paper table 7), every option label is scored as the
//! continuation `" " + label`, and the prediction is the label with the highest log-likelihood.
//!
//! ```text
//! Hati: {passage}
//! Swali: {question}
//! A: {option 1}
//! B: {option 2}
//! C: {option 3}
//! D: {option 4}
//! Jibu:
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Accuracy;
use super::lang::{Language, language};
use crate::error::{CoreError, Result};
use crate::infer::score::Pair;

/// One task record. `answer` is the 0-based index of the correct option.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McRecord {
    #[serde(default)]
    pub id: Option<Value>,
    pub passage: String,
    pub question: String,
    pub options: Vec<String>,
    pub answer: usize,
    pub lang: String,
}

const HINT: &str = "each line is {\"passage\": str, \"question\": str, \"options\": [4 strings], \"answer\": 0-3, \"lang\": code}";

/// Reads and checks a task file: four options, an answer in range, a known language.
pub fn read_mc_tasks(path: &Path) -> Result<Vec<(usize, McRecord)>> {
    let records: Vec<(usize, McRecord)> =
        crate::data::jsonl::read_jsonl(path, "multiple-choice tasks", HINT)?;
    let bad = |line: usize, message: String| CoreError::Input {
        path: path.to_path_buf(),
        line,
        message,
        hint: HINT,
    };
    for (line, r) in &records {
        let line = *line;
        if r.options.len() != 4 {
            return Err(bad(
                line,
                format!(
                    "{} options; BELEBELE-style tasks have exactly 4",
                    r.options.len()
                ),
            ));
        }
        if r.answer >= 4 {
            return Err(bad(
                line,
                format!(
                    "answer {} is out of range: it is the 0-based index of an option (0-3)",
                    r.answer
                ),
            ));
        }
        language(&r.lang).map_err(|e| bad(line, e.to_string()))?;
    }
    Ok(records)
}

/// The prompt of a record and the four scored continuations.
pub fn mc_prompt(r: &McRecord, lang: &Language) -> (String, [String; 4]) {
    let l = &lang.mc;
    let mut prompt = format!(
        "{}: {}\n{}: {}\n",
        l.passage,
        r.passage.trim(),
        l.question,
        r.question.trim()
    );
    for (label, option) in l.options.iter().zip(&r.options) {
        prompt.push_str(&format!("{label}{}{}\n", l.option_sep, option.trim()));
    }
    prompt.push_str(&format!("{}:", l.answer));
    (prompt, l.options.map(|label| format!(" {label}")))
}

/// What was scored for one record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McItem {
    pub line: usize,
    pub id: Option<Value>,
    pub lang: String,
    /// log p(" " + label | prompt) of each option.
    pub logps: [f64; 4],
    pub pred: usize,
    pub answer: usize,
    pub correct: bool,
}

/// Scores every record; `records_per_batch` records (4 rows each) per forward pass.
pub fn eval_mc(
    lm: &crate::Pretrained,
    records: &[(usize, McRecord)],
    chat_template: bool,
    records_per_batch: usize,
    on_batch: &mut dyn FnMut(usize),
) -> Result<Vec<McItem>> {
    let tok = &lm.tokenizer;
    let mut items = Vec::with_capacity(records.len());
    for chunk in records.chunks(records_per_batch.max(1)) {
        let mut pairs = Vec::with_capacity(4 * chunk.len());
        for (_, r) in chunk {
            let (prompt, continuations) = mc_prompt(r, language(&r.lang)?);
            let prompt = tok.prompt_ids(&prompt, chat_template)?;
            for c in continuations {
                pairs.push(Pair {
                    prompt: prompt.clone(),
                    response: tok.encode(&c, false)?,
                });
            }
        }
        let scores = lm.score(&pairs);
        for ((line, r), s) in chunk.iter().zip(scores.chunks(4)) {
            let logps = [s[0].logp, s[1].logp, s[2].logp, s[3].logp];
            // The first of equal maxima, as numpy's argmax.
            let pred = (0..4).fold(0, |best, k| if logps[k] > logps[best] { k } else { best });
            items.push(McItem {
                line: *line,
                id: r.id.clone(),
                lang: r.lang.clone(),
                logps,
                pred,
                answer: r.answer,
                correct: pred == r.answer,
            });
        }
        on_batch(chunk.len());
    }
    Ok(items)
}

/// Accuracy per language and over all items.
pub fn mc_accuracy(items: &[McItem]) -> (BTreeMap<String, Accuracy>, Accuracy) {
    let mut by_lang: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for item in items {
        by_lang
            .entry(item.lang.clone())
            .or_default()
            .push(item.correct);
    }
    (
        by_lang
            .into_iter()
            .map(|(l, v)| (l, Accuracy::from_outcomes(v)))
            .collect(),
        Accuracy::from_outcomes(items.iter().map(|i| i.correct)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<(usize, McRecord)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tasks.jsonl");
        std::fs::write(&path, text).unwrap();
        read_mc_tasks(&path)
    }

    const GOOD: &str = r#"{"passage": "P", "question": "Q", "options": ["a", "b", "c", "d"], "answer": 2, "lang": "ko"}"#;

    #[test]
    fn korean_prompt_uses_table_7_labels() {
        let r = &read(GOOD).unwrap()[0].1;
        let (prompt, cont) = mc_prompt(r, language("ko").unwrap());
        assert_eq!(
            prompt,
            "문서: P\n질문: Q\n가) a\n나) b\n다) c\n라) d\n정답:"
        );
        assert_eq!(cont[2], " 다)");
    }

    #[test]
    fn bad_records_name_the_line_and_the_problem() {
        let three = GOOD.replace(r#", "d"]"#, "]");
        let err = read(&format!("{GOOD}\n{three}")).unwrap_err().to_string();
        assert!(err.contains("tasks.jsonl:2: 3 options"), "{err}");
        let err = read(&GOOD.replace(r#""answer": 2"#, r#""answer": 4"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains(":1: answer 4 is out of range"), "{err}");
        let err = read(&GOOD.replace(r#""ko""#, r#""xx""#))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown language code `xx`") && err.contains("sw"),
            "{err}"
        );
    }
}
