//! The built-in toy world: a bilingual world generator ([`world`]), its pretraining corpus,
//! quadruples and held-out questions ([`data`]), a lexicon language identifier
//! ([`ToyLangId`]), and the quickstart that trains SFT and CLO on it ([`quickstart`]).

pub mod data;
pub mod quickstart;
pub mod shipped;
pub mod study;
pub mod world;

use crate::eval::langid::{LanguageIdentifier, words};
use world::{Lang, word_lang};

/// Language identification of the toy world by its lexicons: each word is English, one toy
/// language, or none (names, cities, numbers, unknown words); a text is the language of most of its
/// labelled words (none on a tie).
#[derive(Debug, Clone, Copy, Default)]
pub struct ToyLangId;

impl LanguageIdentifier for ToyLangId {
    fn languages(&self) -> Vec<String> {
        Lang::ALL.iter().map(|l| l.code().to_string()).collect()
    }

    fn detect(&self, text: &str) -> Option<String> {
        let mut counts = [0usize; Lang::ALL.len()];
        for (_, w) in words(text) {
            if let Some(l) = word_lang(w) {
                counts[Lang::ALL.iter().position(|x| *x == l).expect("listed")] += 1;
            }
        }
        let best = *counts.iter().max().expect("non-empty");
        let mut winners = Lang::ALL.iter().zip(counts).filter(|(_, c)| *c == best);
        match (winners.next(), winners.next()) {
            (Some((l, c)), None) if c > 0 => Some(l.code().to_string()),
            _ => None,
        }
    }

    fn word_labels(&self, text: &str) -> Vec<(String, Option<String>)> {
        words(text)
            .into_iter()
            .map(|(_, w)| (w.to_string(), word_lang(w).map(|l| l.code().to_string())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicon_identifier_labels_words_and_texts() {
        let id = ToyLangId;
        assert_eq!(id.detect("Ana has a cat.").as_deref(), Some("en"));
        assert_eq!(id.detect("Ana misota ome.").as_deref(), Some("toy"));
        assert_eq!(
            id.detect("Ana 3 Paro."),
            None,
            "names and numbers carry no language"
        );
        // One English word in a toy sentence is a switch, not a change of language.
        assert_eq!(id.detect("Ana cat misota ome.").as_deref(), Some("toy"));
        let labels: Vec<Option<String>> = id
            .word_labels("Ana misota has.")
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        assert_eq!(labels, [None, Some("toy".into()), Some("en".into())]);
        assert_eq!(id.detect("Ana hapa zemaku.").as_deref(), Some("vel"));
        assert_eq!(id.detect("Ana avas un kotu.").as_deref(), Some("zir"));
        // One word of each of two languages: a tie, no language.
        assert_eq!(id.detect("Ana kotu cat."), None);
    }
}
