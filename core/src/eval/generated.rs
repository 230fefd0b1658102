//! Evaluation by generation (method.md section 7): every prompt is answered by sampling (top-p
//! 0.9, temperature 0.6 by default, batched), every response's language is identified, and
//! language fidelity is the share of responses in the prompt's language. MMMLU-style records
//! (a question with four options) are asked with the paper's table 6 instruction; the answer is
//! extracted from `Answer: X` or the language's own label, with up to three regenerations when
//! nothing can be extracted; an answer that still cannot be extracted counts as wrong.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Accuracy;
use super::lang::{Language, language};
use super::langid::{LanguageIdentifier, s_index};
use crate::error::{CoreError, Result};
use crate::infer::generate::{SamplingConfig, StopReason};

/// Regenerations allowed when no answer can be extracted (paper appendix D).
pub const MAX_REGENERATIONS: usize = 3;

const LETTERS: [char; 4] = ['A', 'B', 'C', 'D'];

/// A multiple-choice question asked by generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub question: String,
    pub options: [String; 4],
    /// 0-based index of the correct option.
    pub answer: usize,
}

/// One prompt of a generation eval.
#[derive(Debug, Clone, PartialEq)]
pub struct GenRecord {
    /// 1-based line in the prompts file.
    pub line: usize,
    /// The record's `id`, or `line-N`; `clo eval judge` pairs responses by it.
    pub id: String,
    pub lang: String,
    /// Open prompt, or the question of a multiple-choice record.
    pub prompt: String,
    pub choice: Option<Choice>,
}

const HINT: &str = "each line is {\"prompt\": str, \"lang\": code} (open question) or {\"question\": str, \"options\": [4 strings], \"answer\": 0-3 or \"A\"-\"D\", \"lang\": code} (MMMLU style); \"id\" is optional";

fn string_field(v: &Value, key: &str) -> std::result::Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("field `{key}` must be a string, not {other}")),
    }
}

fn parse_record(line: usize, v: &Value) -> std::result::Result<GenRecord, String> {
    if !v.is_object() {
        return Err("a record must be a JSON object".into());
    }
    let lang = string_field(v, "lang")?.ok_or("missing field `lang`")?;
    language(&lang).map_err(|e| e.to_string())?;
    let id = crate::data::jsonl::record_id(v, line);
    let open = match string_field(v, "prompt")? {
        Some(p) => Some(p),
        None => string_field(v, "instruction")?,
    };
    let question = string_field(v, "question")?;
    let (prompt, choice) = match (open, question) {
        (Some(_), Some(_)) => {
            return Err(
                "a record has either `prompt` (open) or `question` (multiple choice), not both"
                    .into(),
            );
        }
        (Some(p), None) => (p, None),
        (None, Some(q)) => {
            let options: Vec<String> = match v.get("options") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|o| o.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or("`options` must be strings")?,
                _ => return Err("a `question` record needs `options`: a list of 4 strings".into()),
            };
            let options: [String; 4] = options.try_into().map_err(|o: Vec<String>| {
                format!("{} options; MMMLU-style questions have exactly 4", o.len())
            })?;
            let answer = match v.get("answer") {
                Some(Value::Number(n)) => n.as_u64().filter(|&a| a < 4).map(|a| a as usize),
                Some(Value::String(s)) => {
                    let s = s.trim();
                    LETTERS
                        .iter()
                        .position(|l| s.len() == 1 && s.starts_with(*l))
                }
                _ => return Err("a `question` record needs `answer`: 0-3 or \"A\"-\"D\"".into()),
            }
            .ok_or_else(|| {
                format!(
                    "answer {} is out of range: 0-3 or \"A\"-\"D\"",
                    v.get("answer").expect("present")
                )
            })?;
            (
                q.clone(),
                Some(Choice {
                    question: q,
                    options,
                    answer,
                }),
            )
        }
        (None, None) => return Err("missing field `prompt` (or `question` with `options`)".into()),
    };
    Ok(GenRecord {
        line,
        id,
        lang,
        prompt,
        choice,
    })
}

/// Reads and checks a prompts file (JSONL).
pub fn read_gen_prompts(path: &Path) -> Result<Vec<GenRecord>> {
    let bad = |line: usize, message: String| CoreError::Input {
        path: path.to_path_buf(),
        line,
        message,
        hint: HINT,
    };
    let mut out: Vec<GenRecord> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (line, v) in crate::data::jsonl::read_jsonl::<Value>(path, "generation prompts", HINT)? {
        let r = parse_record(line, &v).map_err(|m| bad(line, m))?;
        if let Some(prev) = seen.insert(r.id.clone(), line) {
            return Err(bad(
                line,
                format!("id `{}` was already used on line {prev}", r.id),
            ));
        }
        out.push(r);
    }
    Ok(out)
}

/// The text the model is asked: the prompt itself, or for a multiple-choice record the
/// language's table 6 instruction, the question and the lettered options.
pub fn gen_prompt(r: &GenRecord, lang: &Language) -> String {
    match &r.choice {
        None => r.prompt.clone(),
        Some(c) => {
            let mut p = format!("{}\n\n{}\n\n", lang.choice.instruction, c.question.trim());
            for (letter, option) in LETTERS.iter().zip(&c.options) {
                p.push_str(&format!("{letter}) {}\n", option.trim()));
            }
            p.trim_end().to_string()
        }
    }
}

/// The letter a response gives as its answer: the last `Answer: X` or `<label>: X` (the
/// language's own label, table 6), tolerating Markdown bold, full-width colons and brackets.
pub fn extract_choice(response: &str, lang: &Language) -> Option<usize> {
    let pattern = format!(
        r"(?i:answer|{})\**\s*[:：][\s*(\[]*([A-D])(?-u:\b)",
        regex::escape(lang.choice.label)
    );
    let re = Regex::new(&pattern).expect("valid extraction pattern");
    let last = re.captures_iter(response).last()?;
    let letter = last.get(1)?.as_str().chars().next()?;
    LETTERS.iter().position(|l| *l == letter)
}

/// One answered prompt: a line of `responses.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenItem {
    pub line: usize,
    pub id: String,
    pub lang: String,
    /// The prompt as written in the prompts file (the question for multiple choice).
    pub prompt: String,
    /// What the model was asked (before the chat template).
    pub input: String,
    pub response: String,
    pub stop: StopReason,
    pub new_tokens: usize,
    /// The response's language (`None`: no letters to tell by).
    pub detected: Option<String>,
    /// The response is in the prompt's language.
    pub in_language: bool,
    /// Switching index over the response's word labels (see `langid`).
    pub s_index: Option<f64>,
    /// Multiple choice: the correct letter, the extracted one, whether they agree, and how many
    /// generations it took (1 + regenerations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<char>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extracted: Option<char>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct: Option<bool>,
    pub attempts: usize,
}

/// Settings of a generation eval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenConfig {
    pub sampling: SamplingConfig,
    /// Wrap prompts in the model's chat template.
    pub chat_template: bool,
    /// Prompts decoded together.
    pub batch_size: usize,
}

/// A record's seed for one attempt: independent of batching and of the other records.
fn row_seed(base: u64, line: usize, attempt: usize) -> u64 {
    base.wrapping_add(((line as u64) << 2) | attempt as u64)
}

/// A finished generation: text, stop reason, new tokens, extracted option.
type Answered = (String, StopReason, usize, Option<usize>);

/// Answers every record (batched), regenerating multiple-choice answers that cannot be
/// extracted, then identifies each response's language. `on_done(n)` reports finished records.
pub fn eval_gen(
    lm: &crate::Pretrained,
    records: &[GenRecord],
    langid: &dyn LanguageIdentifier,
    config: &GenConfig,
    on_done: &mut dyn FnMut(usize),
) -> Result<Vec<GenItem>> {
    let tok = &lm.tokenizer;
    let mut items = Vec::with_capacity(records.len());
    for chunk in records.chunks(config.batch_size.max(1)) {
        let langs: Vec<&Language> = chunk
            .iter()
            .map(|r| language(&r.lang))
            .collect::<Result<_>>()?;
        let inputs: Vec<String> = chunk
            .iter()
            .zip(&langs)
            .map(|(r, l)| gen_prompt(r, l))
            .collect();
        let ids: Vec<Vec<u32>> = (inputs.iter())
            .map(|p| tok.prompt_ids(p, config.chat_template))
            .collect::<Result<_>>()?;
        let mut done: Vec<Option<Answered>> = vec![None; chunk.len()];
        let mut attempts = vec![0usize; chunk.len()];
        let mut pending: Vec<usize> = (0..chunk.len()).collect();
        while !pending.is_empty() {
            let prompts: Vec<Vec<u32>> = pending.iter().map(|&i| ids[i].clone()).collect();
            let configs: Vec<SamplingConfig> = (pending.iter())
                .map(|&i| SamplingConfig {
                    seed: row_seed(config.sampling.seed, chunk[i].line, attempts[i]),
                    ..config.sampling.clone()
                })
                .collect();
            let outs = lm.generate_batch(&prompts, &configs, |_, _| {});
            let mut again = Vec::new();
            for (&i, out) in pending.iter().zip(outs) {
                attempts[i] += 1;
                let text = tok.decode(&out.ids, true)?;
                let extracted = chunk[i]
                    .choice
                    .as_ref()
                    .and_then(|_| extract_choice(&text, langs[i]));
                let retry = chunk[i].choice.is_some()
                    && extracted.is_none()
                    && attempts[i] <= MAX_REGENERATIONS;
                done[i] = Some((text, out.stop, out.ids.len(), extracted));
                if retry {
                    again.push(i);
                }
            }
            pending = again;
        }
        for (i, r) in chunk.iter().enumerate() {
            let (response, stop, new_tokens, extracted) =
                done[i].take().expect("every row answered");
            let detected = langid.detect(&response);
            let labels = langid.word_labels(&response);
            let s = s_index(labels.iter().map(|(_, l)| l.as_deref()));
            let answer = r.choice.as_ref().map(|c| c.answer);
            items.push(GenItem {
                line: r.line,
                id: r.id.clone(),
                lang: r.lang.clone(),
                prompt: r.prompt.clone(),
                input: inputs[i].clone(),
                in_language: detected.as_deref() == Some(r.lang.as_str()),
                detected,
                s_index: s,
                answer: answer.map(|a| LETTERS[a]),
                extracted: extracted.map(|e| LETTERS[e]),
                correct: answer.map(|a| extracted == Some(a)),
                attempts: attempts[i],
                response,
                stop,
                new_tokens,
            });
        }
        on_done(chunk.len());
    }
    Ok(items)
}

/// The numbers of one language (or of all responses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenStats {
    pub n: usize,
    /// Share of responses in the prompt's language (`accuracy` is the share).
    pub fidelity: Accuracy,
    /// How many responses were identified as each language (`none`: no letters).
    pub detected: BTreeMap<String, usize>,
    /// Mean S-index over responses that have one, and how many had one.
    pub s_index_mean: Option<f64>,
    pub s_index_n: usize,
    /// Share of responses with any switch (S-index > 0) among those with an S-index.
    pub code_switched: Option<f64>,
    /// Multiple-choice records: accuracy (unextractable = wrong) and how many stayed
    /// unextractable after the regenerations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_accuracy: Option<Accuracy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unextracted: Option<usize>,
}

impl GenStats {
    pub fn of<'a>(items: impl IntoIterator<Item = &'a GenItem>) -> Self {
        let items: Vec<&GenItem> = items.into_iter().collect();
        let mut detected = BTreeMap::new();
        for i in &items {
            *detected
                .entry(i.detected.clone().unwrap_or_else(|| "none".into()))
                .or_insert(0) += 1;
        }
        let s: Vec<f64> = items.iter().filter_map(|i| i.s_index).collect();
        let choices: Vec<&&GenItem> = items.iter().filter(|i| i.correct.is_some()).collect();
        GenStats {
            n: items.len(),
            fidelity: Accuracy::from_outcomes(items.iter().map(|i| i.in_language)),
            detected,
            s_index_mean: (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64),
            s_index_n: s.len(),
            code_switched: (!s.is_empty())
                .then(|| s.iter().filter(|x| **x > 0.0).count() as f64 / s.len() as f64),
            choice_accuracy: (!choices.is_empty())
                .then(|| Accuracy::from_outcomes(choices.iter().map(|i| i.correct == Some(true)))),
            unextracted: (!choices.is_empty())
                .then(|| choices.iter().filter(|i| i.extracted.is_none()).count()),
        }
    }
}

/// Stats per language and over all responses.
pub fn gen_stats(items: &[GenItem]) -> (BTreeMap<String, GenStats>, GenStats) {
    let mut langs: Vec<&str> = items.iter().map(|i| i.lang.as_str()).collect();
    langs.sort();
    langs.dedup();
    let per = (langs.into_iter())
        .map(|l| {
            (
                l.to_string(),
                GenStats::of(items.iter().filter(|i| i.lang == l)),
            )
        })
        .collect();
    (per, GenStats::of(items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<GenRecord>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompts.jsonl");
        std::fs::write(&path, text).unwrap();
        read_gen_prompts(&path)
    }

    #[test]
    fn extraction_takes_the_last_answer_in_english_or_the_own_label() {
        let sw = language("sw").unwrap();
        let ko = language("ko").unwrap();
        let zh = language("zh").unwrap();
        assert_eq!(extract_choice("Nadhani B.\nJibu: C", sw), Some(2));
        // Letters are upper case only: "answer: d" is not an answer, so the earlier one counts.
        assert_eq!(extract_choice("Answer: A\n...\nanswer: d", sw), Some(0));
        assert_eq!(extract_choice("Answer: A\nJibu: B", sw), Some(1));
        assert_eq!(extract_choice("**Answer:** (B)", sw), Some(1));
        assert_eq!(extract_choice("답변: D로 하겠습니다", ko), Some(3));
        assert_eq!(extract_choice("所以答案：B", zh), Some(1));
        // "Answer: And" is not a letter answer; a label of another language is not accepted.
        assert_eq!(extract_choice("Answer: And so it goes", sw), None);
        assert_eq!(extract_choice("Jawaban: B", sw), None);
        assert_eq!(extract_choice("no answer here", sw), None);
    }

    #[test]
    fn choice_prompt_uses_table_6() {
        let r = &read(
            r#"{"question": "2+2?", "options": ["1","2","3","4"], "answer": "D", "lang": "sw"}"#,
        )
        .unwrap()[0];
        assert_eq!(r.choice.as_ref().unwrap().answer, 3);
        assert_eq!(r.id, "line-1");
        let p = gen_prompt(r, language("sw").unwrap());
        assert!(
            p.starts_with("Jibu swali lifuatalo la chaguo nyingi."),
            "{p}"
        );
        assert!(p.ends_with("2+2?\n\nA) 1\nB) 2\nC) 3\nD) 4"), "{p}");
    }

    #[test]
    fn bad_prompt_files_name_the_line_and_the_problem() {
        let err = |t: &str| read(t).unwrap_err().to_string();
        let e = err("{\"prompt\": \"hi\", \"lang\": \"en\"}\n{\"prompt\": \"x\"}");
        assert!(e.contains("prompts.jsonl:2: missing field `lang`"), "{e}");
        let e = err(r#"{"question": "q", "options": ["a","b","c"], "answer": 0, "lang": "en"}"#);
        assert!(e.contains(":1: 3 options"), "{e}");
        let e =
            err(r#"{"question": "q", "options": ["a","b","c","d"], "answer": "E", "lang": "en"}"#);
        assert!(e.contains("answer \"E\" is out of range"), "{e}");
        let e = err(r#"{"prompt": "q", "lang": "xx"}"#);
        assert!(e.contains("unknown language code `xx`"), "{e}");
        let e = err(
            "{\"id\": 1, \"prompt\": \"a\", \"lang\": \"en\"}\n{\"id\": 1, \"prompt\": \"b\", \"lang\": \"en\"}",
        );
        assert!(e.contains(":2: id `1` was already used on line 1"), "{e}");
        assert!(err("\n").contains("no records"));
    }

    fn item(lang: &str, detected: Option<&str>, s: Option<f64>, correct: Option<bool>) -> GenItem {
        GenItem {
            line: 1,
            id: "x".into(),
            lang: lang.into(),
            prompt: String::new(),
            input: String::new(),
            response: String::new(),
            stop: StopReason::Eos,
            new_tokens: 0,
            detected: detected.map(str::to_string),
            in_language: detected == Some(lang),
            s_index: s,
            answer: correct.map(|_| 'A'),
            extracted: correct.and_then(|c| c.then_some('A')),
            correct,
            attempts: 1,
        }
    }

    #[test]
    fn stats_count_fidelity_switching_and_choices() {
        let items = [
            item("sw", Some("sw"), Some(0.0), Some(true)),
            item("sw", Some("en"), Some(0.5), Some(false)),
            item("sw", None, None, None),
            item("en", Some("en"), Some(0.0), None),
        ];
        let (per, all) = gen_stats(&items);
        let sw = &per["sw"];
        assert_eq!((sw.n, sw.fidelity.correct), (3, 1));
        assert_eq!(sw.detected["none"], 1);
        assert_eq!(sw.s_index_mean, Some(0.25));
        assert_eq!(sw.code_switched, Some(0.5));
        let ch = sw.choice_accuracy.unwrap();
        assert_eq!((ch.n, ch.correct), (2, 1));
        assert_eq!(sw.unextracted, Some(1));
        assert_eq!(per["en"].choice_accuracy, None);
        assert_eq!((all.n, all.fidelity.correct), (4, 2));
    }
}
