//! Reading toy-language text: each template compiled to an anchored regex, a sentence parsed
//! back into its frame (so translation is parse-then-render), and an answer's content
//! ([`atoms`]) and words' languages read whatever language it is in.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{
    Affixes, CITIES, Frame, KINDS, Lang, NAMES, Slot, Word, frame_from, render, slot_text, template,
};

fn alternation(words: &[&str]) -> String {
    format!("(?:{})", words.join("|"))
}

/// Regex of one placeholder (one capture group) in `lang`.
fn slot_pattern(name: &str, lang: Lang) -> String {
    let g = lang.grammar();
    let names = alternation(&NAMES);
    let (animals, colors) = (alternation(&g.animals), alternation(&g.colors));
    let and = g.and;
    let list = |item: &str| format!("((?:{item}, )*{item} {and} {item}|{item})");
    match name {
        "p" => format!("({names})"),
        "a" => format!("({animals})"),
        "c" => format!("({colors})"),
        "t" => format!("({})", alternation(&CITIES)),
        "nb" => r"(\d+ [a-z]+)".into(),
        "n1" | "n2" | "n3" => r"(\d+)".into(),
        "pl" => list(&names),
        "al" => list(&animals),
        "wl" => format!("((?:(?:{animals}|{colors}) )*(?:{animals}|{colors}))"),
        other => unreachable!("placeholder {other}"),
    }
}

/// A template compiled for parsing: language, kind, anchored regex, placeholders in order.
type Parser = (Lang, usize, Regex, Vec<String>);

/// Per language and kind: the template as an anchored regex and its placeholders in order.
static PARSERS: LazyLock<Vec<Parser>> = LazyLock::new(|| {
    let placeholder = Regex::new(r"\{([a-z0-9]+)\}").expect("valid");
    let mut out = Vec::new();
    for lang in Lang::ALL {
        for kind in 0..KINDS {
            let t = template(kind, lang);
            let mut pattern = String::from("(?i)^");
            let mut names = Vec::new();
            let mut last = 0;
            for cap in placeholder.captures_iter(t) {
                let m = cap.get(0).expect("match");
                pattern.push_str(&regex::escape(&t[last..m.start()]));
                pattern.push_str(&slot_pattern(&cap[1], lang));
                names.push(cap[1].to_string());
                last = m.end();
            }
            pattern.push_str(&regex::escape(&t[last..]));
            pattern.push('$');
            out.push((lang, kind, Regex::new(&pattern).expect("valid"), names));
        }
    }
    out
});

pub(super) fn index_of(list: &[&str], word: &str) -> Option<u8> {
    list.iter()
        .position(|w| w.eq_ignore_ascii_case(word))
        .map(|i| i as u8)
}

fn split_list(text: &str, lang: Lang) -> Vec<&str> {
    let and = format!(" {} ", lang.grammar().and);
    text.split(", ")
        .flat_map(|part| part.split(and.as_str()))
        .collect()
}

fn parse_slot(name: &str, text: &str, lang: Lang) -> Option<Slot> {
    let g = lang.grammar();
    let (animals, colors) = (&g.animals, &g.colors);
    Some(match name {
        "p" => Slot::Person(index_of(&NAMES, text)?),
        "a" => Slot::Animal(index_of(animals, text)?),
        "c" => Slot::Color(index_of(colors, text)?),
        "t" => Slot::City(index_of(&CITIES, text)?),
        "n1" | "n2" | "n3" => Slot::Num(text.parse().ok()?),
        "nb" => {
            let (n, noun) = text.split_once(' ')?;
            let n: u8 = n.parse().ok()?;
            let want = slot_text(&Slot::NumBooks(n), lang);
            (want == text || want.split_once(' ')?.1 == noun.to_lowercase())
                .then_some(Slot::NumBooks(n))?
        }
        "pl" => Slot::People(
            split_list(text, lang)
                .into_iter()
                .map(|w| index_of(&NAMES, w))
                .collect::<Option<_>>()?,
        ),
        "al" => Slot::Animals(
            split_list(text, lang)
                .into_iter()
                .map(|w| index_of(animals, w))
                .collect::<Option<_>>()?,
        ),
        "wl" => Slot::Words(
            text.split(' ')
                .map(|w| {
                    index_of(animals, w)
                        .map(Word::Animal)
                        .or_else(|| index_of(colors, w).map(Word::Color))
                })
                .collect::<Option<_>>()?,
        ),
        _ => return None,
    })
}

/// The frame a sentence of `lang` says, if it is one the toy world's grammar makes.
pub fn parse(text: &str, lang: Lang) -> Option<Frame> {
    let text = text.trim();
    for (l, kind, re, names) in PARSERS.iter() {
        if *l != lang {
            continue;
        }
        let Some(caps) = re.captures(text) else {
            continue;
        };
        let mut values = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let slot = parse_slot(name, caps.get(i + 1)?.as_str(), lang)?;
            // A placeholder used twice must agree (none is, today).
            if values
                .insert(name.as_str(), slot.clone())
                .is_some_and(|s| s != slot)
            {
                return None;
            }
        }
        if let Some(frame) = frame_from(*kind, &values) {
            return Some(frame);
        }
    }
    None
}

/// Exact translation of a toy-world sentence; `None` if the sentence is not one of its grammar.
pub fn translate(text: &str, from: Lang, to: Lang) -> Option<String> {
    parse(text, from).map(|f| render(&f, to))
}

/// A unit of meaning in a text, the same in every language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Atom {
    Person(u8),
    City(u8),
    Animal(u8),
    Color(u8),
    Num(u32),
    Book,
}

/// The meaning-bearing words of any text, in order and in either language: names, cities,
/// numbers, animals, colours and books. Function words and unknown words are skipped, so the
/// same answer (a statement) in any two languages has the same atoms in the same order.
pub fn atoms(text: &str) -> Vec<Atom> {
    static TOKEN: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\d+|[A-Za-z]+").expect("valid"));
    TOKEN
        .find_iter(text)
        .filter_map(|m| atom_of(m.as_str()))
        .collect()
}

fn atom_of(token: &str) -> Option<Atom> {
    if let Ok(n) = token.parse::<u32>() {
        return Some(Atom::Num(n));
    }
    if let Some(p) = index_of(&NAMES, token) {
        return Some(Atom::Person(p));
    }
    if let Some(c) = index_of(&CITIES, token) {
        return Some(Atom::City(c));
    }
    let lower = token.to_lowercase();
    for lang in Lang::ALL {
        let g = lang.grammar();
        for stem in stems(&lower, lang) {
            if let Some(a) = index_of(&g.animals, stem) {
                return Some(Atom::Animal(a));
            }
            if let Some(c) = index_of(&g.colors, stem) {
                return Some(Atom::Color(c));
            }
            if stem == g.book {
                return Some(Atom::Book);
            }
            // A city with a case affix (`Paroro`).
            if stem.len() < lower.len()
                && let Some(c) = index_of(&CITIES, stem)
            {
                return Some(Atom::City(c));
            }
        }
    }
    None
}

/// The candidate stems of a lower-case word in `lang`: the word itself, then the word with its
/// affixes stripped outermost first (`pukalita` -> `puka`, `ridoku` -> `doku`, `cats` -> `cat`),
/// each strip keeping at least three letters.
fn stems(word: &str, lang: Lang) -> Vec<&str> {
    let mut out = vec![word];
    let mut stem = word;
    match lang.grammar().affixes {
        Affixes::None => {
            if let Some(s) = word.strip_suffix('s') {
                out.push(s);
            }
        }
        Affixes::Suffixes(list) => {
            for suffix in list {
                if let Some(s) = stem.strip_suffix(suffix)
                    && s.len() >= 3
                {
                    stem = s;
                    out.push(s);
                }
            }
        }
        Affixes::Prefixes(list) => {
            for prefix in list {
                if let Some(s) = stem.strip_prefix(prefix)
                    && s.len() >= 3
                {
                    stem = s;
                    out.push(s);
                }
            }
        }
    }
    out
}

/// Which language a word belongs to by the lexicons: `None` for names, cities, numbers and
/// words of no language.
pub fn word_lang(word: &str) -> Option<Lang> {
    let lower = word.to_lowercase();
    Lang::ALL.into_iter().find(|&lang| {
        let g = lang.grammar();
        stems(&lower, lang)
            .into_iter()
            .enumerate()
            .any(|(i, stem)| {
                g.function.contains(&stem)
                || g.animals.contains(&stem)
                || g.colors.contains(&stem)
                || stem == g.book
                || stem == g.books
                // A name with a case affix (`Paroro`) is that language's morphology.
                || (i > 0 && index_of(&CITIES, stem).is_some())
            })
    })
}
