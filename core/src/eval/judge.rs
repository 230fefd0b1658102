//! Pairwise comparison by an LLM judge (method.md section 7) with the paper's ranking prompt
//! (appendix C: AlpacaEval's ranking prompt, with the clause on answering in another language
//! for non-English instructions). Every pair is judged in both orders to cancel position bias;
//! an answer the judge does not give as a ranking is asked again, then counted as invalid.
//!
//! Scoring, per pair: each order gives 1 when A is ranked first, 0 when B is, 0.5 when the
//! judgement stayed invalid; the pair's score is the mean of its two orders, so a pair the judge
//! decides differently in the two orders is a tie (0.5). The win rate of A over B is the mean
//! score, with its standard error (sample standard deviation / sqrt(n)).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CoreError, Result};

/// The system prompt of appendix C.
pub const SYSTEM_PROMPT: &str = "You are a highly efficient assistant, who evaluates and rank large language models (LLMs) based on the quality of their responses to given prompts. This process will create a leaderboard reflecting the most accurate and human-preferred answers.";

const TASK: &str = "Evaluate and rank the models based on the quality and relevance of their outputs. The ranking should be such that the model with the highest quality output is ranked first.";

const LANGUAGE_CLAUSE: &str = " Additionally, since the purpose is to measure multilinguality, if a model responds in a language different from the instruction's language, this should be reflected in the evaluation.";

/// AlpacaEval asks for the ranking through a `make_partial_leaderboard` function call; plain
/// chat endpoints get the same structure asked for as text.
const OUTPUT_FORMAT: &str = "Output only the ranking as JSON, a list with one object per model: [{\"model\": \"<identifier>\", \"rank\": <1 or 2>}, ...].";

/// The user prompt of appendix C for one instruction and two outputs (shown as models `m` and
/// `M`). `multilingual` adds the clause on answering in another language (the paper uses it for
/// every language but English).
pub fn judge_prompt(
    instruction: &str,
    output_m: &str,
    output_big_m: &str,
    multilingual: bool,
) -> String {
    // The texts go inside JSON strings: escape them as JSON does.
    let esc = |s: &str| {
        let quoted = serde_json::to_string(s).expect("strings serialize");
        quoted[1..quoted.len() - 1].to_string()
    };
    format!(
        "I require a leaderboard for various large language models. I'll provide you with prompts given to these models and their corresponding responses. Your task is to assess these responses, ranking the models in order of preference from a human perspective. Once ranked, please output the results in a structured JSON format for the make_partial_leaderboard function.\n\n\
         ## Prompt\n{{\n  \"instruction\": \"{}\"\n}}\n\n\
         ## Model Outputs\n\nHere are the unordered outputs from the models. Each output is associated with a specific model, identified by a unique model identifier.\n\n\
         {{\n  {{\n    \"model\": \"m\",\n    \"output\": \"{}\"\n  }},\n  {{\n    \"model\": \"M\",\n    \"output\": \"{}\"\n  }}\n}}\n\n\
         ## Task\n{TASK}{}\n\n{OUTPUT_FORMAT}",
        esc(instruction),
        esc(output_m),
        esc(output_big_m),
        if multilingual { LANGUAGE_CLAUSE } else { "" },
    )
}

/// The identifier the judge ranked first (`"m"` or `"M"`), or `None` when the answer is not a
/// ranking of exactly these two models with distinct ranks.
pub fn parse_ranking(answer: &str) -> Option<&'static str> {
    static OBJECT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\{[^{}]*\}").expect("valid"));
    static MODEL: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#"["']?model["']?\s*:\s*["']([^"']*)["']"#).expect("valid"));
    static RANK: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r#"["']?rank["']?\s*:\s*["']?(\d+)"#).expect("valid"));
    let mut ranks: BTreeMap<String, u32> = BTreeMap::new();
    for object in OBJECT.find_iter(answer) {
        let text = object.as_str();
        let (Some(model), Some(rank)) = (MODEL.captures(text), RANK.captures(text)) else {
            continue;
        };
        let rank: u32 = rank[1].parse().ok()?;
        if ranks.insert(model[1].trim().to_string(), rank).is_some() {
            return None; // the same model ranked twice
        }
    }
    let (m, big_m) = (ranks.get("m")?, ranks.get("M")?);
    if ranks.len() != 2 || m == big_m {
        return None;
    }
    Some(if m < big_m { "m" } else { "M" })
}

/// One instruction with the two responses to compare.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgePair {
    pub id: String,
    pub lang: Option<String>,
    pub instruction: String,
    pub a: String,
    pub b: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Response {
    line: usize,
    id: String,
    lang: Option<String>,
    instruction: String,
    response: String,
}

const HINT: &str = "each line is a response: {\"id\", \"prompt\" (or \"instruction\"), \"response\" (or \"output\"), \"lang\"?}, as `clo eval gen` writes responses.jsonl";

fn read_responses(path: &Path) -> Result<Vec<Response>> {
    let bad = |line: usize, message: String| CoreError::Input {
        path: path.to_path_buf(),
        line,
        message,
        hint: HINT,
    };
    let mut out = Vec::new();
    for (line, v) in crate::data::jsonl::read_jsonl::<Value>(path, "responses", HINT)? {
        let text_field = |keys: [&str; 2]| {
            keys.iter()
                .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_string))
                .ok_or_else(|| {
                    bad(
                        line,
                        format!("missing field `{}` (or `{}`)", keys[0], keys[1]),
                    )
                })
        };
        out.push(Response {
            line,
            id: crate::data::jsonl::record_id(&v, line),
            lang: v.get("lang").and_then(Value::as_str).map(str::to_string),
            instruction: text_field(["prompt", "instruction"])?,
            response: text_field(["response", "output"])?,
        });
    }
    Ok(out)
}

/// Pairs the responses of A and B by id (in A's order); both files must hold the same ids for
/// the same instructions.
pub fn read_pairs(a_path: &Path, b_path: &Path) -> Result<Vec<JudgePair>> {
    let a = read_responses(a_path)?;
    let b = read_responses(b_path)?;
    let mut by_id: BTreeMap<&str, &Response> = BTreeMap::new();
    for r in &b {
        if by_id.insert(&r.id, r).is_some() {
            return Err(CoreError::Input {
                path: b_path.to_path_buf(),
                line: r.line,
                message: format!("id `{}` appears twice", r.id),
                hint: HINT,
            });
        }
    }
    let mut pairs = Vec::with_capacity(a.len());
    for ra in &a {
        let rb = by_id
            .remove(ra.id.as_str())
            .ok_or_else(|| CoreError::Input {
                path: a_path.to_path_buf(),
                line: ra.line,
                message: format!("id `{}` has no response in {}", ra.id, b_path.display()),
                hint: "judge the responses of two runs over the same prompts file",
            })?;
        if rb.instruction != ra.instruction {
            return Err(CoreError::Input {
                path: b_path.to_path_buf(),
                line: rb.line,
                message: format!(
                    "id `{}` has another prompt than line {} of {}",
                    ra.id,
                    ra.line,
                    a_path.display()
                ),
                hint: "judge the responses of two runs over the same prompts file",
            });
        }
        pairs.push(JudgePair {
            id: ra.id.clone(),
            lang: ra.lang.clone().or(rb.lang.clone()),
            instruction: ra.instruction.clone(),
            a: ra.response.clone(),
            b: rb.response.clone(),
        });
    }
    if let Some(extra) = by_id.values().next() {
        return Err(CoreError::Input {
            path: b_path.to_path_buf(),
            line: extra.line,
            message: format!("id `{}` has no response in {}", extra.id, a_path.display()),
            hint: "judge the responses of two runs over the same prompts file",
        });
    }
    Ok(pairs)
}

/// Which response a judgement preferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    A,
    B,
    /// No ranking could be read from the judge's answers.
    Invalid,
}

impl Verdict {
    fn score(self) -> f64 {
        match self {
            Verdict::A => 1.0,
            Verdict::B => 0.0,
            Verdict::Invalid => 0.5,
        }
    }
}

/// One order's judgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// Which response was shown first, as model `m`.
    pub first: Verdict,
    pub verdict: Verdict,
    /// Requests made (1 + retries for unreadable answers).
    pub tries: usize,
    /// The judge's last answer.
    pub answer: String,
}

/// A judged pair: a line of `responses.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeItem {
    #[serde(flatten)]
    pub pair: JudgePair,
    /// A shown first, then B shown first.
    pub judgements: [Judgement; 2],
    /// 1 A wins, 0.5 tie, 0 B wins.
    pub score: f64,
}

/// Judges one pair in both orders. `ask(system, user)` sends one request; unreadable answers
/// are asked again up to `retries` times.
pub fn judge_pair(
    pair: &JudgePair,
    retries: usize,
    ask: &dyn Fn(&str, &str) -> Result<String>,
) -> Result<JudgeItem> {
    let multilingual = pair.lang.as_deref() != Some("en");
    let mut judgements = Vec::with_capacity(2);
    for first in [Verdict::A, Verdict::B] {
        let (m, big_m) = match first {
            Verdict::A => (&pair.a, &pair.b),
            _ => (&pair.b, &pair.a),
        };
        let prompt = judge_prompt(&pair.instruction, m, big_m, multilingual);
        let mut tries = 0;
        let (verdict, answer) = loop {
            tries += 1;
            let answer = ask(SYSTEM_PROMPT, &prompt)?;
            let verdict = match (parse_ranking(&answer), first) {
                (Some("m"), Verdict::A) | (Some("M"), Verdict::B) => Verdict::A,
                (Some(_), _) => Verdict::B,
                (None, _) => Verdict::Invalid,
            };
            if verdict != Verdict::Invalid || tries > retries {
                break (verdict, answer);
            }
            tracing::warn!(id = %pair.id, tries, "unreadable judge answer; asking again");
        };
        judgements.push(Judgement {
            first,
            verdict,
            tries,
            answer,
        });
    }
    let judgements: [Judgement; 2] = judgements.try_into().expect("two orders");
    let score = (judgements[0].verdict.score() + judgements[1].verdict.score()) / 2.0;
    Ok(JudgeItem {
        pair: pair.clone(),
        judgements,
        score,
    })
}

/// Win rate of A over B.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinRate {
    pub n: usize,
    /// Pairs A won in both orders (or in one with the other invalid).
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// Judgements (two per pair) that stayed unreadable after the retries.
    pub invalid_judgements: usize,
    /// Pairs whose two orders disagreed (a position-bias signal).
    pub order_disagreements: usize,
    pub win_rate: f64,
    pub stderr: f64,
}

impl WinRate {
    pub fn of<'a>(items: impl IntoIterator<Item = &'a JudgeItem>) -> Self {
        let items: Vec<&JudgeItem> = items.into_iter().collect();
        let scores: Vec<f64> = items.iter().map(|i| i.score).collect();
        let n = scores.len();
        let mean = if n == 0 {
            0.0
        } else {
            scores.iter().sum::<f64>() / n as f64
        };
        let stderr = if n < 2 {
            0.0
        } else {
            let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            (var / n as f64).sqrt()
        };
        let decided = |i: &&&JudgeItem| i.judgements.iter().all(|j| j.verdict != Verdict::Invalid);
        WinRate {
            n,
            wins: scores.iter().filter(|s| **s > 0.5).count(),
            ties: scores.iter().filter(|s| **s == 0.5).count(),
            losses: scores.iter().filter(|s| **s < 0.5).count(),
            invalid_judgements: (items.iter())
                .flat_map(|i| &i.judgements)
                .filter(|j| j.verdict == Verdict::Invalid)
                .count(),
            order_disagreements: (items.iter())
                .filter(decided)
                .filter(|i| i.judgements[0].verdict != i.judgements[1].verdict)
                .count(),
            win_rate: mean,
            stderr,
        }
    }
}

/// Win rate per language (`unknown` when a response has none) and over all pairs.
pub fn win_rates(items: &[JudgeItem]) -> (BTreeMap<String, WinRate>, WinRate) {
    let lang = |i: &JudgeItem| i.pair.lang.clone().unwrap_or_else(|| "unknown".into());
    let mut langs: Vec<String> = items.iter().map(lang).collect();
    langs.sort();
    langs.dedup();
    let per = (langs.into_iter())
        .map(|l| {
            let w = WinRate::of(items.iter().filter(|i| lang(i) == l));
            (l, w)
        })
        .collect();
    (per, WinRate::of(items))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rankings_parse_in_the_usual_shapes() {
        assert_eq!(
            parse_ranking(r#"[{"model": "m", "rank": 2}, {"model": "M", "rank": 1}]"#),
            Some("M")
        );
        assert_eq!(
            parse_ranking("```json\n[{'model': 'm', 'rank': 1},\n {'model': 'M', 'rank': 2}]\n```"),
            Some("m")
        );
        assert_eq!(
            parse_ranking(r#"[{"rank": "1", "model": "M"}, {"rank": "2", "model": "m"}]"#),
            Some("M")
        );
        for bad in [
            "I prefer the first one.",
            r#"[{"model": "m", "rank": 1}]"#,
            r#"[{"model": "m", "rank": 1}, {"model": "M", "rank": 1}]"#,
            r#"[{"model": "m", "rank": 1}, {"model": "x", "rank": 2}]"#,
        ] {
            assert_eq!(parse_ranking(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_prompt_escapes_texts_and_adds_the_clause_outside_english() {
        let p = judge_prompt("Say \"hi\"", "line1\nline2", "b", true);
        assert!(p.contains(r#""instruction": "Say \"hi\"""#), "{p}");
        assert!(p.contains(r#""output": "line1\nline2""#), "{p}");
        assert!(p.contains("responds in a language different"));
        assert!(!judge_prompt("x", "a", "b", false).contains("responds in a language different"));
    }

    fn pair() -> JudgePair {
        JudgePair {
            id: "1".into(),
            lang: Some("sw".into()),
            instruction: "q".into(),
            a: "answer A".into(),
            b: "answer B".into(),
        }
    }

    /// A judge that always prefers the output containing `A`, whatever its position.
    fn prefers_a(_: &str, user: &str) -> Result<String> {
        let m_is_a = user.find("answer A") < user.find("answer B");
        Ok(if m_is_a {
            r#"[{"model": "m", "rank": 1}, {"model": "M", "rank": 2}]"#
        } else {
            r#"[{"model": "M", "rank": 1}, {"model": "m", "rank": 2}]"#
        }
        .into())
    }

    #[test]
    fn both_orders_are_judged_and_position_bias_becomes_a_tie() {
        let item = judge_pair(&pair(), 2, &prefers_a).unwrap();
        assert_eq!(item.judgements[0].first, Verdict::A);
        assert_eq!(item.judgements[1].first, Verdict::B);
        assert_eq!(
            (item.judgements[0].verdict, item.judgements[1].verdict),
            (Verdict::A, Verdict::A)
        );
        assert_eq!(item.score, 1.0);
        // Always ranking the first shown output first: A in one order, B in the other.
        let first = |_: &str, _: &str| {
            Ok(r#"[{"model": "m", "rank": 1}, {"model": "M", "rank": 2}]"#.to_string())
        };
        let item = judge_pair(&pair(), 2, &first).unwrap();
        assert_eq!(item.score, 0.5);
        let w = WinRate::of([&item]);
        assert_eq!((w.ties, w.order_disagreements), (1, 1));
    }

    #[test]
    fn unreadable_answers_are_retried_then_counted_invalid() {
        let calls = std::cell::Cell::new(0);
        let flaky = |s: &str, u: &str| {
            calls.set(calls.get() + 1);
            if calls.get() % 2 == 1 {
                Ok("no idea".to_string())
            } else {
                prefers_a(s, u)
            }
        };
        let item = judge_pair(&pair(), 2, &flaky).unwrap();
        assert_eq!(
            item.judgements.iter().map(|j| j.tries).collect::<Vec<_>>(),
            [2, 2]
        );
        assert_eq!(item.score, 1.0);
        let never = |_: &str, _: &str| Ok("no idea".to_string());
        let item = judge_pair(&pair(), 2, &never).unwrap();
        assert_eq!(item.judgements[0].tries, 3);
        assert_eq!(item.judgements[0].verdict, Verdict::Invalid);
        let w = WinRate::of([&item]);
        assert_eq!(
            (w.invalid_judgements, w.ties, w.order_disagreements),
            (2, 1, 0)
        );
    }

    #[test]
    fn win_rate_has_the_sample_standard_error() {
        let mk = |score| JudgeItem {
            pair: pair(),
            judgements: std::array::from_fn(|_| Judgement {
                first: Verdict::A,
                verdict: Verdict::A,
                tries: 1,
                answer: String::new(),
            }),
            score,
        };
        // numpy: x = [1, 0.5, 0, 1]; mean 0.625; x.std(ddof=1)/2 = 0.2394
        let items = [mk(1.0), mk(0.5), mk(0.0), mk(1.0)];
        let w = WinRate::of(&items);
        assert_eq!((w.wins, w.ties, w.losses), (2, 1, 1));
        assert!((w.win_rate - 0.625).abs() < 1e-12);
        assert!((w.stderr - 0.239_356_8).abs() < 1e-6, "{}", w.stderr);
    }
}
