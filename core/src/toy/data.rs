//! Data of the toy world: the English-centric pretraining corpus, training quadruples, and the
//! held-out questions the quickstart validates and evaluates on.
//!
//! Two sets of questions are held out from every quadruple, so that evaluation asks what
//! training never showed in a toy language:
//! - **test** ([`Split::Test`]): the facts of the last [`EVAL_PEOPLE`] people, the sums and
//!   differences whose operands fall in [`is_held_out_pair`], lists that name a test person, and
//!   new words to repeat;
//! - **validation** ([`Split::Validation`]), for choosing settings: the facts of the
//!   [`VAL_PEOPLE`] people before them, another share of operand pairs
//!   ([`is_validation_pair`]), lists that name a validation person and no test person, and other
//!   new words. No validation question is a test question.
//!
//! The base model knows all of them in English from pretraining; whether it can say them in a
//! toy language after fine-tuning is the cross-lingual question CLO is about.

use std::collections::{BTreeMap, HashSet};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::world::{
    Frame, Lang, MAX_OPERAND, NAMES, QUESTION_KINDS, World, random_question, random_statement,
    render,
};
use crate::train::data::Quadruple;
use crate::train::pretrain::Doc;

/// How many people (the last ones) are held out of the quadruples for the test.
pub const EVAL_PEOPLE: usize = 6;
/// How many people (those before the test people) are held out for validation.
pub const VAL_PEOPLE: usize = 2;

/// Which held-out questions: for choosing settings, or for the final numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Validation,
    Test,
}

fn person_split(p: u8) -> Option<Split> {
    let p = p as usize;
    if p >= NAMES.len() - EVAL_PEOPLE {
        Some(Split::Test)
    } else if p >= NAMES.len() - EVAL_PEOPLE - VAL_PEOPLE {
        Some(Split::Validation)
    } else {
        None
    }
}

/// Arithmetic questions held out for the test: about a quarter of the operand pairs.
pub fn is_held_out_pair(a: u8, b: u8) -> bool {
    (a as u32 * 7 + b as u32 * 3).is_multiple_of(4)
}

/// Arithmetic questions held out for validation: about an eighth of the operand pairs, none of
/// them a test pair.
pub fn is_validation_pair(a: u8, b: u8) -> bool {
    (a as u32 * 7 + b as u32 * 3) % 8 == 2
}

fn pair_split(a: u8, b: u8) -> Option<Split> {
    if is_held_out_pair(a, b) {
        Some(Split::Test)
    } else if is_validation_pair(a, b) {
        Some(Split::Validation)
    } else {
        None
    }
}

/// The held-out split a question belongs to by its content (`None`: it may be trained on).
/// Words to repeat belong to no split by content: their held-out sets are drawn fresh.
pub fn split_of(q: &Frame) -> Option<Split> {
    match q {
        Frame::AskPet { person }
        | Frame::AskColor { person }
        | Frame::AskCity { person }
        | Frame::AskBooks { person } => person_split(*person),
        Frame::AskSum { a, b } | Frame::AskDiff { a, b } => pair_split(*a, *b),
        Frame::AskPets(people) => {
            let splits: Vec<Split> = people.iter().filter_map(|p| person_split(*p)).collect();
            if splits.contains(&Split::Test) {
                Some(Split::Test)
            } else {
                splits.first().copied()
            }
        }
        _ => None,
    }
}

/// Whether a question is reserved for validation or evaluation.
pub fn is_held_out(q: &Frame) -> bool {
    split_of(q).is_some()
}

/// Settings of the pretraining corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CorpusConfig {
    pub world_seed: u64,
    pub documents: usize,
    /// Share of documents in each toy language. English has the rest.
    pub shares: BTreeMap<Lang, f64>,
    /// Of a toy language's documents, the share that are dialogs asked in that language and
    /// answered in English (as an English-centric assistant does); the rest are paragraphs of
    /// statements. No dialog is ever answered in a toy language.
    pub cross_dialog_share: f64,
    /// Share of all documents that are English dialogs (the rest of English: statements).
    pub dialog_share: f64,
    pub seed: u64,
}

impl CorpusConfig {
    /// The shipped model's tiers: `vel` 20% (high), `toy` 4% (medium), `zir` 0.5% (low).
    pub fn default_shares() -> BTreeMap<Lang, f64> {
        [(Lang::Vel, 0.2), (Lang::Toy, 0.04), (Lang::Zir, 0.005)]
            .into_iter()
            .collect()
    }

    /// The share of documents in English.
    pub fn english_share(&self) -> f64 {
        1.0 - self.shares.values().sum::<f64>()
    }
}

impl Default for CorpusConfig {
    fn default() -> Self {
        Self {
            world_seed: 0,
            documents: 24_000,
            shares: Self::default_shares(),
            cross_dialog_share: 0.3,
            dialog_share: 0.6,
            seed: 1,
        }
    }
}

/// The English-centric corpus: English dialogs (every kind of question, every person), English
/// paragraphs of true statements, and for each toy language its share of paragraphs and of
/// dialogs asked in it and answered in English.
pub fn pretrain_corpus(world: &World, c: &CorpusConfig) -> Vec<Doc> {
    let mut rng = StdRng::seed_from_u64(c.seed);
    let paragraph = |rng: &mut StdRng, lang: Lang| {
        let n = rng.random_range(3..=6);
        (0..n)
            .map(|_| render(&random_statement(world, rng), lang))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let chat = |rng: &mut StdRng, asked: Lang| {
        let kind = QUESTION_KINDS.choose(rng).expect("non-empty");
        let q = random_question(kind, rng);
        let a = world.answer(&q).expect("random questions are answerable");
        Doc::Chat {
            prompt: render(&q, asked),
            response: render(&a, Lang::En),
        }
    };
    (0..c.documents)
        .map(|_| {
            let mut r: f64 = rng.random();
            for (&lang, &share) in &c.shares {
                if r < share {
                    return if rng.random_bool(c.cross_dialog_share.clamp(0.0, 1.0)) {
                        chat(&mut rng, lang)
                    } else {
                        Doc::Text {
                            text: paragraph(&mut rng, lang),
                        }
                    };
                }
                r -= share;
            }
            if r < c.dialog_share {
                chat(&mut rng, Lang::En)
            } else {
                Doc::Text {
                    text: paragraph(&mut rng, Lang::En),
                }
            }
        })
        .collect()
}

/// `n` training quadruples for toy language `lang` (questions not held out, every kind
/// equally likely), exactly translated. Quadruples of a smaller `n` with the same seed are a
/// prefix of a larger one, and the questions drawn do not depend on the language.
pub fn quadruples(world: &World, lang: Lang, n: usize, seed: u64) -> Vec<Quadruple> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let kind = QUESTION_KINDS.choose(&mut rng).expect("non-empty");
        let q = random_question(kind, &mut rng);
        if is_held_out(&q) {
            continue;
        }
        let a = world.answer(&q).expect("random questions are answerable");
        out.push(Quadruple {
            id: format!("{}-{seed}-{}", lang.code(), out.len()),
            lang: lang.code().into(),
            x_en: render(&q, Lang::En),
            y_en: render(&a, Lang::En),
            x_tgt: render(&q, lang),
            y_tgt: render(&a, lang),
            extra: [("kind".to_string(), serde_json::json!(kind))]
                .into_iter()
                .collect(),
        });
    }
    out
}

/// Quadruples as JSONL, one record per line.
pub fn quadruples_jsonl(quads: &[Quadruple]) -> String {
    let mut text = String::new();
    for q in quads {
        text.push_str(&serde_json::to_string(q).expect("quadruples serialize"));
        text.push('\n');
    }
    text
}

/// A held-out question with its answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalQuestion {
    pub id: String,
    pub kind: String,
    pub question: Frame,
    pub answer: Frame,
}

/// Held-out questions of `split`: every fact kind for each of its people, and `per_kind`
/// questions of every other kind (its arithmetic pairs, lists naming one of its people, new
/// words to repeat that no quadruple of `train` asks for). The validation words to repeat are
/// drawn apart from the test ones: no validation question is ever a test question.
pub fn held_out_questions(
    world: &World,
    split: Split,
    per_kind: usize,
    seed: u64,
    train: &[Quadruple],
) -> Vec<EvalQuestion> {
    let mut seen: HashSet<String> = train.iter().map(|q| q.x_en.clone()).collect();
    if split == Split::Validation {
        // The test's words to repeat are off limits.
        seen.extend(
            held_out_questions(world, Split::Test, per_kind, seed, train)
                .iter()
                .map(|q| render(&q.question, Lang::En)),
        );
    }
    let salt = match split {
        Split::Test => 0xE7A1,
        Split::Validation => 0x5A11,
    };
    let mut rng = StdRng::seed_from_u64(seed ^ salt);
    let mut out: Vec<EvalQuestion> = Vec::new();
    let push = |q: Frame, out: &mut Vec<EvalQuestion>| {
        let answer = world.answer(&q).expect("answerable");
        let kind = q.question_kind().expect("a question").to_string();
        out.push(EvalQuestion {
            id: format!("{kind}-{}", out.len()),
            kind,
            question: q,
            answer,
        });
    };
    for person in 0..NAMES.len() as u8 {
        if person_split(person) != Some(split) {
            continue;
        }
        for q in [
            Frame::AskPet { person },
            Frame::AskColor { person },
            Frame::AskCity { person },
            Frame::AskBooks { person },
        ] {
            push(q, &mut out);
        }
    }
    let mut pairs: Vec<(u8, u8)> = (0..=MAX_OPERAND)
        .flat_map(|a| (0..=MAX_OPERAND).map(move |b| (a, b)))
        .filter(|(a, b)| pair_split(*a, *b) == Some(split))
        .collect();
    for kind in ["sum", "diff", "pets", "repeat"] {
        let mut asked = HashSet::new();
        let mut tries = 0;
        while asked.len() < per_kind && tries < 10_000 {
            tries += 1;
            let q = match kind {
                "sum" | "diff" => {
                    let Some(&(a, b)) = pairs.choose(&mut rng) else {
                        break;
                    };
                    if kind == "sum" {
                        Frame::AskSum { a, b }
                    } else if a >= b {
                        Frame::AskDiff { a, b }
                    } else {
                        continue;
                    }
                }
                _ => random_question(kind, &mut rng),
            };
            let text = render(&q, Lang::En);
            let fresh = match kind {
                "pets" => split_of(&q) == Some(split),
                "repeat" => !seen.contains(&text),
                _ => true,
            };
            if fresh && asked.insert(text) {
                push(q, &mut out);
            }
        }
        pairs.shuffle(&mut rng);
    }
    out
}

/// The test questions (see [`held_out_questions`]).
pub fn eval_questions(
    world: &World,
    per_kind: usize,
    seed: u64,
    train: &[Quadruple],
) -> Vec<EvalQuestion> {
    held_out_questions(world, Split::Test, per_kind, seed, train)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toy::world::{atoms, parse};

    #[test]
    fn quadruples_are_exact_translations_and_never_ask_held_out_questions() {
        let world = World::new(0);
        for lang in Lang::TARGETS {
            let quads = quadruples(&world, lang, 300, 5);
            assert_eq!(quads.len(), 300);
            for q in &quads {
                assert_eq!(q.lang, lang.code());
                let x = parse(&q.x_en, Lang::En).unwrap();
                assert!(!is_held_out(&x), "{}", q.x_en);
                assert_eq!(parse(&q.x_tgt, lang), Some(x.clone()));
                let y = parse(&q.y_en, Lang::En).unwrap();
                assert_eq!(
                    world.answer(&x),
                    Some(y.clone()),
                    "{} -> {}",
                    q.x_en,
                    q.y_en
                );
                assert_eq!(parse(&q.y_tgt, lang), Some(y));
            }
            // Every kind is present, and smaller sets are prefixes of larger ones.
            for kind in QUESTION_KINDS {
                assert!(quads.iter().any(|q| q.extra["kind"] == kind), "{kind}");
            }
            assert_eq!(quadruples(&world, lang, 100, 5), quads[..100]);
        }
        // The same questions in every language.
        let (a, b) = (
            quadruples(&world, Lang::Vel, 50, 5),
            quadruples(&world, Lang::Zir, 50, 5),
        );
        assert!(a.iter().zip(&b).all(|(a, b)| a.x_en == b.x_en));
    }

    #[test]
    fn eval_questions_are_held_out_and_answered_truly() {
        let world = World::new(0);
        let train = quadruples(&world, Lang::Toy, 2000, 1);
        let qs = eval_questions(&world, 10, 1, &train);
        assert_eq!(qs.len(), 4 * EVAL_PEOPLE + 4 * 10);
        let train_x: HashSet<&str> = train.iter().map(|q| q.x_en.as_str()).collect();
        for q in &qs {
            let text = render(&q.question, Lang::En);
            assert!(
                !train_x.contains(text.as_str()),
                "{text} is in the training set"
            );
            if q.kind != "repeat" {
                assert_eq!(split_of(&q.question), Some(Split::Test), "{text}");
            }
            assert_eq!(world.answer(&q.question).as_ref(), Some(&q.answer));
            assert!(!atoms(&render(&q.answer, Lang::Toy)).is_empty());
        }
    }

    /// Validation questions (for choosing settings) never overlap the test questions nor the
    /// training quadruples, and there are enough of every kind.
    #[test]
    fn validation_questions_never_overlap_the_test() {
        let world = World::new(0);
        let train = quadruples(&world, Lang::Vel, 3200, 2);
        let test = held_out_questions(&world, Split::Test, 12, 0, &train);
        let val = held_out_questions(&world, Split::Validation, 12, 0, &train);
        let test_x: HashSet<String> = test.iter().map(|q| render(&q.question, Lang::En)).collect();
        let train_x: HashSet<&str> = train.iter().map(|q| q.x_en.as_str()).collect();
        // Facts of the validation people, and at least 6 questions of every other kind.
        assert_eq!(val.iter().filter(|q| q.kind == "pet").count(), VAL_PEOPLE);
        for kind in ["sum", "diff", "pets", "repeat"] {
            let n = val.iter().filter(|q| q.kind == kind).count();
            assert!(n >= 6, "{kind}: {n}");
        }
        for q in &val {
            let text = render(&q.question, Lang::En);
            assert!(!test_x.contains(&text), "{text} is a test question");
            assert!(!train_x.contains(text.as_str()), "{text} is trained on");
            if q.kind != "repeat" {
                assert_eq!(split_of(&q.question), Some(Split::Validation), "{text}");
            }
        }
        // No operand pair is in both held-out sets.
        for a in 0..=MAX_OPERAND {
            for b in 0..=MAX_OPERAND {
                assert!(!(is_held_out_pair(a, b) && is_validation_pair(a, b)));
            }
        }
    }

    #[test]
    fn corpus_is_english_centric_with_tiers_as_designed_and_states_only_truths() {
        let world = World::new(0);
        let config = CorpusConfig {
            documents: 40_000,
            ..Default::default()
        };
        let docs = pretrain_corpus(&world, &config);
        let mut per_lang: BTreeMap<Lang, usize> = BTreeMap::new();
        let mut chats = 0;
        let lang_of = |text: &str| {
            Lang::ALL
                .into_iter()
                .find(|l| parse(text, *l).is_some())
                .unwrap_or_else(|| panic!("{text}"))
        };
        for d in &docs {
            match d {
                Doc::Chat { prompt, response } => {
                    chats += 1;
                    let lang = lang_of(prompt);
                    *per_lang.entry(lang).or_default() += 1;
                    // Every dialog is answered in English, and truly.
                    let q = parse(prompt, lang).unwrap();
                    assert_eq!(world.answer(&q), parse(response, Lang::En), "{prompt}");
                }
                Doc::Text { text } => {
                    // Each sentence of a paragraph is a true statement of one language.
                    let sentences: Vec<String> = text
                        .split_inclusive(". ")
                        .map(|s| s.trim().to_string())
                        .collect();
                    let lang = lang_of(&sentences[0]);
                    *per_lang.entry(lang).or_default() += 1;
                    for s in sentences {
                        let f = parse(&s, lang).unwrap_or_else(|| panic!("{s}"));
                        assert!(
                            world.facts().contains(&f)
                                || matches!(f, Frame::Sum { a, b, c } if a + b == c)
                                || matches!(f, Frame::Diff { a, b, c } if a - b == c),
                            "{s}"
                        );
                    }
                }
            }
        }
        // Each tier's share is as designed (within 3 binomial standard errors).
        let n = docs.len() as f64;
        for (lang, want) in config
            .shares
            .iter()
            .map(|(l, s)| (*l, *s))
            .chain([(Lang::En, config.english_share())])
        {
            let got = per_lang.get(&lang).copied().unwrap_or(0) as f64 / n;
            let se = (want * (1.0 - want) / n).sqrt();
            assert!(
                (got - want).abs() < 3.0 * se + 1e-9,
                "{lang}: {got} vs {want}"
            );
        }
        assert!(config.shares[&Lang::Vel] > config.shares[&Lang::Toy]);
        assert!(config.shares[&Lang::Toy] > config.shares[&Lang::Zir]);
        assert!(config.english_share() > 0.7);
        assert!(chats > docs.len() / 2);
    }
}
