use rand::SeedableRng;
use rand::rngs::StdRng;

use super::parse::index_of;
use super::*;
use regex::Regex;

fn frames(n: usize) -> Vec<Frame> {
    let world = World::new(7);
    let mut rng = StdRng::seed_from_u64(1);
    let mut out = Vec::new();
    for i in 0..n {
        let q = random_question(QUESTION_KINDS[i % QUESTION_KINDS.len()], &mut rng);
        out.push(world.answer(&q).unwrap());
        out.push(q);
    }
    out
}

#[test]
fn sentences_read_as_expected() {
    let f = Frame::Books { person: 0, n: 3 };
    assert_eq!(render(&f, Lang::En), "Ana has 3 books.");
    assert_eq!(render(&f, Lang::Toy), "Ana 3 pukalita ome.");
    assert_eq!(render(&f, Lang::Vel), "Ana hapa 3 ridoku.");
    assert_eq!(render(&f, Lang::Zir), "Ana avas 3 liboen.");
    let q = Frame::AskPet { person: 0 };
    assert_eq!(render(&q, Lang::Vel), "Ki Ana hapa zedapi?");
    assert_eq!(render(&q, Lang::Zir), "Su Ana avas kiu besto?");
    let f = Frame::Books { person: 1, n: 1 };
    assert_eq!(render(&f, Lang::En), "Bela has 1 book.");
    assert_eq!(render(&f, Lang::Toy), "Bela 1 pukata ome.");
    let q = Frame::AskPets(vec![0, 2, 3]);
    assert_eq!(render(&q, Lang::En), "Which pets do Ana, Dan and Eli have?");
    assert_eq!(render(&q, Lang::Toy), "Ana, Dan mo Eli ne damulita ome ka?");
    let w = Frame::Words(vec![Word::Color(0), Word::Animal(1)]);
    assert_eq!(render(&w, Lang::En), "Red dog.");
    assert_eq!(render(&w, Lang::Toy), "Ruka wuna.");
    assert_eq!(
        render(&Frame::LivesIn { person: 4, city: 0 }, Lang::Toy),
        "Fen Paroro dema."
    );
}

/// Every frame survives render -> parse in every language, and translation between any two.
#[test]
fn frames_round_trip_through_every_language() {
    for f in frames(400) {
        for lang in Lang::ALL {
            let text = render(&f, lang);
            assert_eq!(parse(&text, lang), Some(f.clone()), "{lang:?}: {text}");
            for other in Lang::ALL.into_iter().filter(|l| *l != lang) {
                assert_eq!(parse(&text, other), None, "{text} parses as {other:?} too");
                let there = translate(&text, lang, other).unwrap();
                assert_eq!(
                    translate(&there, other, lang).as_deref(),
                    Some(text.as_str())
                );
            }
        }
    }
}

/// The renderings of a frame carry the same atoms in every language, and the words of each
/// are labelled with their own language only.
#[test]
fn atoms_and_word_languages_agree_across_languages() {
    let word = Regex::new(r"[A-Za-z]+").unwrap();
    for f in frames(400) {
        let en = render(&f, Lang::En);
        for lang in Lang::ALL {
            let text = render(&f, lang);
            // Answers say their content in the same order; questions may order it otherwise.
            let (mut a, mut b) = (atoms(&en), atoms(&text));
            if f.question_kind().is_some() {
                a.sort();
                b.sort();
            }
            assert_eq!(a, b, "{en} | {text}");
            let labels: Vec<Option<Lang>> = word
                .find_iter(&text)
                .map(|m| word_lang(m.as_str()))
                .collect();
            assert!(
                labels.iter().flatten().all(|l| *l == lang),
                "{text}: {labels:?}"
            );
            assert!(labels.iter().flatten().count() >= 1, "{text}");
        }
        assert!(!atoms(&en).is_empty(), "{en}");
    }
}

/// No word (or stem) of one language's lexicon is a word of another, so a word's language
/// is never ambiguous.
#[test]
fn lexicons_are_disjoint() {
    for lang in Lang::ALL {
        let g = lang.grammar();
        let words = g
            .function
            .iter()
            .chain(&g.animals)
            .chain(&g.colors)
            .chain([&g.book, &g.books]);
        for w in words {
            assert_eq!(word_lang(w), Some(lang), "{w} of {lang:?}");
            assert!(index_of(&NAMES, w).is_none() && index_of(&CITIES, w).is_none());
        }
    }
    assert_eq!("vel".parse::<Lang>(), Ok(Lang::Vel));
    assert!(
        "xx".parse::<Lang>()
            .unwrap_err()
            .contains("en, vel, toy, zir")
    );
}

#[test]
fn answers_are_checkable() {
    let world = World::new(7);
    let q = Frame::AskSum { a: 3, b: 4 };
    let a = world.answer(&q).unwrap();
    assert_eq!(render(&a, Lang::En), "3 plus 4 is 7.");
    assert_eq!(render(&a, Lang::Toy), "3 ju 4 sa 7 eda.");
    assert_eq!(world.answer(&Frame::AskDiff { a: 2, b: 5 }), None);
    let pet = world.answer(&Frame::AskPet { person: 5 }).unwrap();
    assert_eq!(
        pet,
        Frame::HasPet {
            person: 5,
            animal: world.pets[5]
        }
    );
    // A wrong fact has other atoms; the same fact in the other language has the same ones.
    let wrong = Frame::HasPet {
        person: 5,
        animal: (world.pets[5] + 1) % 6,
    };
    assert_ne!(
        atoms(&render(&wrong, Lang::En)),
        atoms(&render(&pet, Lang::Toy))
    );
    assert_eq!(
        atoms(&render(&pet, Lang::En)),
        atoms(&render(&pet, Lang::Toy))
    );
    // Garbled or off-grammar text does not parse.
    assert_eq!(parse("Ana has a cats.", Lang::En), None);
    assert_eq!(parse("Ana has 3 book.", Lang::En), None);
    assert_eq!(parse("Ana misota ome ka ka.", Lang::Toy), None);
    assert_eq!(world.facts().len(), 4 * NAMES.len());
    assert_eq!(World::new(7), world, "a world is a function of its seed");
    assert_ne!(World::new(8), world);
}
