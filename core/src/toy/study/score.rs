//! How the study scores its models: answers of the right kind, win rates, how English-centric
//! the base model is, and whether CLO beats SFT in a language.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{EnglishCentric, StudyRow, Tuning, Verdict, final_rewards, nan_estimate};
use crate::eval::report::{Estimate, pooled};
use crate::toy::quickstart::{ToyItem, ToyResults, ToyStats};
use crate::toy::world::{Lang, parse};

/// Share of `lang` answers that parse in `lang` as a statement of the expected answer's kind.
pub fn right_kind(items: &[ToyItem], lang: Lang) -> Option<f64> {
    let mine: Vec<&ToyItem> = items.iter().filter(|i| i.lang == lang.code()).collect();
    if mine.is_empty() {
        return None;
    }
    let ok = mine
        .iter()
        .filter(
            |i| match (parse(&i.response, lang), parse(&i.expected, lang)) {
                (Some(a), Some(b)) => std::mem::discriminant(&a) == std::mem::discriminant(&b),
                _ => false,
            },
        )
        .count();
    Some(ok as f64 / mine.len() as f64)
}

/// Win rate of `a` against `b` per question of `lang`: 1 when only `a` is right and in the
/// language, 0.5 when both or neither are, 0 otherwise. Questions are matched by id.
pub fn win_rate(a: &[ToyItem], b: &[ToyItem], lang: Lang) -> Option<f64> {
    let good = |i: &ToyItem| i.correct && i.in_language;
    let theirs: BTreeMap<&str, bool> = b
        .iter()
        .filter(|i| i.lang == lang.code())
        .map(|i| (i.id.as_str(), good(i)))
        .collect();
    let scores: Vec<f64> = a
        .iter()
        .filter(|i| i.lang == lang.code())
        .filter_map(|i| {
            let other = *theirs.get(i.id.as_str())?;
            Some(match (good(i), other) {
                (true, false) => 1.0,
                (false, true) => 0.0,
                _ => 0.5,
            })
        })
        .collect();
    (!scores.is_empty()).then(|| scores.iter().sum::<f64>() / scores.len() as f64)
}

/// Per language: accuracy, fidelity and the share answered in English.
pub fn english_centric(items: &[ToyItem], langs: &[Lang]) -> BTreeMap<Lang, EnglishCentric> {
    langs
        .iter()
        .map(|&l| {
            let mine: Vec<&ToyItem> = items.iter().filter(|i| i.lang == l.code()).collect();
            let n = mine.len().max(1) as f64;
            let share =
                |f: &dyn Fn(&ToyItem) -> bool| mine.iter().filter(|i| f(i)).count() as f64 / n;
            (
                l,
                EnglishCentric {
                    accuracy: share(&|i| i.correct),
                    fidelity: share(&|i| i.in_language),
                    answered_in_english: share(&|i| i.detected.as_deref() == Some("en")),
                },
            )
        })
        .collect()
}

/// CLO against SFT in `lang` at the two smallest sizes.
pub(super) fn verdict(lang: Lang, rows: &[StudyRow], sizes: &[usize]) -> Verdict {
    let mut sizes = sizes.to_vec();
    sizes.sort();
    let small: Vec<usize> = sizes.iter().take(2).copied().collect();
    let find = |m: &str, n: Option<usize>| {
        rows.iter()
            .find(|r| r.lang == lang && r.method == m && r.size == n)
    };
    let base_en = find("base", None).map(|r| r.en_accuracy.value);
    let clo_beats_sft = small
        .iter()
        .all(|&n| match (find("clo", Some(n)), find("sft", Some(n))) {
            (Some(c), Some(s)) => {
                c.tgt_correct_in_language.value > s.tgt_correct_in_language.value
                    && c.tgt_fidelity.value > s.tgt_fidelity.value
            }
            _ => false,
        });
    let english_kept = base_en.is_some_and(|b| {
        sizes
            .iter()
            .all(|&n| find("clo", Some(n)).is_some_and(|c| c.en_accuracy.value >= b - 0.02))
    });
    Verdict {
        lang,
        sizes: small,
        clo_beats_sft,
        english_kept,
    }
}

/// The row of a method (at a size) in a language: its estimates over the seeds' runs.
pub(super) fn study_row(
    lang: Lang,
    method: &str,
    size: Option<usize>,
    tuned: Option<&Tuning>,
    runs: &[(ToyResults, Vec<ToyItem>, PathBuf)],
    reference: Option<&Vec<(ToyResults, Vec<ToyItem>, PathBuf)>>,
) -> StudyRow {
    let est = |lang: &str, f: &dyn Fn(&ToyStats) -> crate::eval::Accuracy| {
        pooled(
            &runs
                .iter()
                .map(|(r, _, _)| {
                    let a = f(&r.per_language[lang]);
                    Estimate {
                        value: a.accuracy,
                        stderr: a.stderr,
                    }
                })
                .collect::<Vec<_>>(),
        )
    };
    let tgt = lang.code();
    let kinds: Vec<Estimate> = runs
        .iter()
        .filter_map(|(_, items, _)| right_kind(items, lang))
        .map(|v| Estimate {
            value: v,
            stderr: 0.0,
        })
        .collect();
    let tgt_right_kind = if kinds.is_empty() {
        nan_estimate()
    } else {
        pooled(&kinds)
    };
    // Win rates pair runs of the same seed (runs are in seed order on both sides).
    let win_rate = reference.and_then(|refs| {
        let wins: Vec<Estimate> = runs
            .iter()
            .zip(refs)
            .filter_map(|((_, a, _), (_, b, _))| win_rate(a, b, lang))
            .map(|w| Estimate {
                value: w,
                stderr: 0.0,
            })
            .collect();
        (wins.len() == runs.len() && size.is_some()).then(|| pooled(&wins))
    });
    let rewards: Vec<[f64; 4]> = runs
        .iter()
        .filter_map(|(_, _, d)| final_rewards(d))
        .collect();
    // Runs with a preference loss log rewards (zero while the policy is still the reference);
    // the others log none.
    let rewards = (!rewards.is_empty()).then(|| {
        let mut m = [0.0; 4];
        for r in &rewards {
            for (m, x) in m.iter_mut().zip(r) {
                *m += x / rewards.len() as f64;
            }
        }
        m
    });
    StudyRow {
        lang,
        method: method.into(),
        size,
        seeds: runs.len(),
        lr: tuned.map(|t| t.setting.lr),
        beta: tuned.map(|t| t.setting.beta),
        tgt_fidelity: est(tgt, &|s| s.fidelity),
        tgt_accuracy: est(tgt, &|s| s.accuracy),
        tgt_correct_in_language: est(tgt, &|s| s.correct_in_language),
        tgt_right_kind,
        en_accuracy: est("en", &|s| s.accuracy),
        win_rate,
        rewards,
    }
}
