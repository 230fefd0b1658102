//! Data of the toy world: the English-centric pretraining corpus, training quadruples, and the
//! held-out questions the quickstart evaluates on.
//!
//! Held out from every quadruple (so that evaluation asks what training never showed in the
//! toy language): the facts of the last [`EVAL_PEOPLE`] people, the sums and differences whose
//! operands fall in [`is_held_out_pair`], and lists that name a held-out person. The base model
//! knows all of them in English from pretraining; whether it can say them in the toy language
//! after fine-tuning is the cross-lingual question CLO is about.

use std::collections::HashSet;

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

/// How many people (the last ones) are held out of the quadruples.
pub const EVAL_PEOPLE: usize = 6;

fn held_out_person(p: u8) -> bool {
    (p as usize) >= NAMES.len() - EVAL_PEOPLE
}

/// Arithmetic questions held out of the quadruples: about a quarter of the operand pairs.
pub fn is_held_out_pair(a: u8, b: u8) -> bool {
    (a as u32 * 7 + b as u32 * 3).is_multiple_of(4)
}

/// Whether a question is reserved for evaluation.
pub fn is_held_out(q: &Frame) -> bool {
    match q {
        Frame::AskPet { person }
        | Frame::AskColor { person }
        | Frame::AskCity { person }
        | Frame::AskBooks { person } => held_out_person(*person),
        Frame::AskSum { a, b } | Frame::AskDiff { a, b } => is_held_out_pair(*a, *b),
        Frame::AskPets(people) => people.iter().any(|p| held_out_person(*p)),
        _ => false,
    }
}

/// Settings of the pretraining corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusConfig {
    pub world_seed: u64,
    pub documents: usize,
    /// Share of documents in the toy language (plain statements; no toy dialogs).
    pub target_share: f64,
    /// Share of documents that are English dialogs (the rest: English statements).
    pub dialog_share: f64,
    pub seed: u64,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        Self {
            world_seed: 0,
            documents: 24_000,
            target_share: 0.1,
            dialog_share: 0.6,
            seed: 1,
        }
    }
}

/// The English-centric corpus: English dialogs (every kind of question, every person),
/// English paragraphs of true statements, and a small share of toy-language paragraphs.
pub fn pretrain_corpus(world: &World, c: &CorpusConfig) -> Vec<Doc> {
    let mut rng = StdRng::seed_from_u64(c.seed);
    let paragraph = |rng: &mut StdRng, lang: Lang| {
        let n = rng.random_range(3..=6);
        (0..n)
            .map(|_| render(&random_statement(world, rng), lang))
            .collect::<Vec<_>>()
            .join(" ")
    };
    (0..c.documents)
        .map(|_| {
            let r: f64 = rng.random();
            if r < c.target_share {
                Doc::Text {
                    text: paragraph(&mut rng, Lang::Toy),
                }
            } else if r < c.target_share + c.dialog_share {
                let kind = QUESTION_KINDS.choose(&mut rng).expect("non-empty");
                let q = random_question(kind, &mut rng);
                let a = world.answer(&q).expect("random questions are answerable");
                Doc::Chat {
                    prompt: render(&q, Lang::En),
                    response: render(&a, Lang::En),
                }
            } else {
                Doc::Text {
                    text: paragraph(&mut rng, Lang::En),
                }
            }
        })
        .collect()
}

/// `n` training quadruples (questions not held out, every kind equally likely), exactly
/// translated. Quadruples of a smaller `n` with the same seed are a prefix of a larger one.
pub fn quadruples(world: &World, n: usize, seed: u64) -> Vec<Quadruple> {
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
            id: format!("toy-{seed}-{}", out.len()),
            lang: Lang::Toy.code().into(),
            x_en: render(&q, Lang::En),
            y_en: render(&a, Lang::En),
            x_tgt: render(&q, Lang::Toy),
            y_tgt: render(&a, Lang::Toy),
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

/// Held-out questions: every fact kind for each held-out person, and `per_kind` questions of
/// every other kind (held-out arithmetic, lists with a held-out person, new words to repeat
/// that no quadruple of `train` asks for).
pub fn eval_questions(
    world: &World,
    per_kind: usize,
    seed: u64,
    train: &[Quadruple],
) -> Vec<EvalQuestion> {
    let seen: HashSet<&str> = train.iter().map(|q| q.x_en.as_str()).collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0xE7A1);
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
    for person in (NAMES.len() - EVAL_PEOPLE) as u8..NAMES.len() as u8 {
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
        .filter(|(a, b)| is_held_out_pair(*a, *b))
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
                "pets" => is_held_out(&q),
                "repeat" => !seen.contains(text.as_str()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toy::world::{atoms, parse};

    #[test]
    fn quadruples_are_exact_translations_and_never_ask_held_out_questions() {
        let world = World::new(0);
        let quads = quadruples(&world, 300, 5);
        assert_eq!(quads.len(), 300);
        for q in &quads {
            let x = parse(&q.x_en, Lang::En).unwrap();
            assert!(!is_held_out(&x), "{}", q.x_en);
            assert_eq!(parse(&q.x_tgt, Lang::Toy), Some(x.clone()));
            let y = parse(&q.y_en, Lang::En).unwrap();
            assert_eq!(
                world.answer(&x),
                Some(y.clone()),
                "{} -> {}",
                q.x_en,
                q.y_en
            );
            assert_eq!(parse(&q.y_tgt, Lang::Toy), Some(y));
        }
        // Every kind is present, and smaller sets are prefixes of larger ones.
        for kind in QUESTION_KINDS {
            assert!(quads.iter().any(|q| q.extra["kind"] == kind), "{kind}");
        }
        assert_eq!(quadruples(&world, 100, 5), quads[..100]);
    }

    #[test]
    fn eval_questions_are_held_out_and_answered_truly() {
        let world = World::new(0);
        let train = quadruples(&world, 2000, 1);
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
                assert!(is_held_out(&q.question), "{text}");
            }
            assert_eq!(world.answer(&q.question).as_ref(), Some(&q.answer));
            assert!(!atoms(&render(&q.answer, Lang::Toy)).is_empty());
        }
    }

    #[test]
    fn corpus_is_english_centric_and_states_only_truths() {
        let world = World::new(0);
        let docs = pretrain_corpus(
            &world,
            &CorpusConfig {
                documents: 2000,
                ..Default::default()
            },
        );
        let mut toy = 0;
        let mut chats = 0;
        for d in &docs {
            match d {
                Doc::Chat { prompt, response } => {
                    chats += 1;
                    let q = parse(prompt, Lang::En).unwrap();
                    assert_eq!(world.answer(&q), parse(response, Lang::En));
                }
                Doc::Text { text } => {
                    // Each sentence of a paragraph is a true statement of one language.
                    let sentences: Vec<String> = text
                        .split_inclusive(". ")
                        .map(|s| s.trim().to_string())
                        .collect();
                    let lang = if parse(&sentences[0], Lang::Toy).is_some() {
                        toy += 1;
                        Lang::Toy
                    } else {
                        Lang::En
                    };
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
        let share = toy as f64 / docs.len() as f64;
        assert!((0.07..0.13).contains(&share), "toy share {share}");
        assert!(chats > docs.len() / 2);
    }
}
