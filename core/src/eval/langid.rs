//! Language identification of responses (restricted to the languages in play) and the S-index
//! of code-switching.
//!
//! The S-index (switching index) of a text is the share of word boundaries at which the language
//! changes: with `n` words that carry a language label, in order, and `s` the number of
//! neighbouring pairs whose labels differ, `S = s / (n - 1)`. It is 0 for a monolingual text and
//! 1 when every word switches; words without a label (numbers, symbols, words the identifier
//! cannot place) are left out, and a text with fewer than two labelled words has no S-index.
//! This is the switch-point fraction of Guzmán et al. (2017, the "I-index"), the measure the
//! seeds' S-index names.

use std::sync::LazyLock;

use regex::Regex;

/// Identifies the language of a whole text and of each of its words, as ISO 639-1 codes.
pub trait LanguageIdentifier: Send + Sync {
    /// The codes this identifier can answer with.
    fn languages(&self) -> Vec<String>;
    /// The language of the whole text, or `None` when it cannot tell (no letters).
    fn detect(&self, text: &str) -> Option<String>;
    /// Each word of the text with its language, in order.
    fn word_labels(&self, text: &str) -> Vec<(String, Option<String>)>;
}

/// Words for code-switching: runs of letters (with inner apostrophes and hyphens); a run of Han
/// characters is one word, also where it touches Latin letters without a space.
pub fn words(text: &str) -> Vec<(usize, &str)> {
    static WORD: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\p{Han}+|[\p{L}\p{M}--\p{Han}]+(?:['’\-][\p{L}\p{M}--\p{Han}]+)*")
            .expect("valid word pattern")
    });
    WORD.find_iter(text)
        .map(|m| (m.start(), m.as_str()))
        .collect()
}

/// The S-index of a sequence of word labels (module docs); `None` with fewer than two labels.
pub fn s_index<'a>(labels: impl IntoIterator<Item = Option<&'a str>>) -> Option<f64> {
    let labelled: Vec<&str> = labels.into_iter().flatten().collect();
    if labelled.len() < 2 {
        return None;
    }
    let switches = labelled.windows(2).filter(|w| w[0] != w[1]).count();
    Some(switches as f64 / (labelled.len() - 1) as f64)
}

#[cfg(feature = "langid")]
pub use lingua_id::Lingua;

#[cfg(feature = "langid")]
mod lingua_id {
    use lingua::{Language as LinguaLanguage, LanguageDetector, LanguageDetectorBuilder};

    use super::{LanguageIdentifier, words};
    use crate::error::{CoreError, Result};

    /// How sure lingua must be of a word on its own for the word to keep that language.
    pub const WORD_CONFIDENCE: f64 = 0.75;

    /// lingua, restricted to a set of languages (restricting it is what makes short texts
    /// reliable: the paper's setting has English and one target language in play).
    pub struct Lingua {
        detector: LanguageDetector,
        codes: Vec<String>,
    }

    fn code_of(language: LinguaLanguage) -> String {
        language.iso_code_639_1().to_string().to_lowercase()
    }

    impl Lingua {
        /// The codes this build can identify.
        pub fn supported() -> Vec<String> {
            let mut codes: Vec<String> = LinguaLanguage::all().into_iter().map(code_of).collect();
            codes.sort();
            codes
        }

        /// An identifier for the given ISO 639-1 codes (duplicates are ignored).
        pub fn new<S: AsRef<str>>(codes: &[S]) -> Result<Self> {
            let all = LinguaLanguage::all();
            let mut languages = Vec::new();
            let mut kept = Vec::new();
            for code in codes {
                let code = code.as_ref().to_lowercase();
                if kept.contains(&code) {
                    continue;
                }
                let language = (all.iter().copied())
                    .find(|l| code_of(*l) == code)
                    .ok_or_else(|| {
                        CoreError::Invalid(format!(
                            "language `{code}` cannot be identified by this build (lingua with: {})",
                            Self::supported().join(", ")
                        ))
                    })?;
                languages.push(language);
                kept.push(code);
            }
            if languages.is_empty() {
                return Err(CoreError::Invalid(
                    "language identification needs at least one language".into(),
                ));
            }
            let detector = LanguageDetectorBuilder::from_languages(&languages).build();
            Ok(Self {
                detector,
                codes: kept,
            })
        }
    }

    impl LanguageIdentifier for Lingua {
        fn languages(&self) -> Vec<String> {
            self.codes.clone()
        }

        fn detect(&self, text: &str) -> Option<String> {
            if !text.chars().any(char::is_alphabetic) {
                return None;
            }
            self.detector.detect_language_of(text).map(code_of)
        }

        /// A word keeps its own language when lingua is at least [`WORD_CONFIDENCE`] sure of it
        /// (a code-switch can be one word long); short or ambiguous words ("I", "so", "na")
        /// take the language of the stretch of text they sit in (lingua's mixed-language
        /// detection), else of the whole text.
        fn word_labels(&self, text: &str) -> Vec<(String, Option<String>)> {
            let sections = self.detector.detect_multiple_languages_of(text);
            let whole = self.detect(text);
            words(text)
                .into_iter()
                .map(|(start, w)| {
                    let own = self.detector.compute_language_confidence_values(w);
                    let label = match own.first() {
                        Some((lang, conf)) if *conf >= WORD_CONFIDENCE => Some(code_of(*lang)),
                        _ => (sections.iter())
                            .find(|s| s.start_index() <= start && start < s.end_index())
                            .map(|s| code_of(s.language()))
                            .or_else(|| whole.clone()),
                    };
                    (w.to_string(), label)
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s_index_counts_switches_between_labelled_words() {
        let l = |v: &[&'static str]| -> Vec<Option<&'static str>> {
            v.iter().map(|c| (!c.is_empty()).then_some(*c)).collect()
        };
        assert_eq!(s_index(l(&["en", "en", "en"])), Some(0.0));
        assert_eq!(s_index(l(&["en", "sw", "en", "sw"])), Some(1.0));
        // en en | sw sw | en: 2 switches over 4 boundaries; the unlabelled word is skipped.
        assert_eq!(s_index(l(&["en", "en", "", "sw", "sw", "en"])), Some(0.5));
        assert_eq!(s_index(l(&["en", ""])), None);
    }

    #[test]
    fn words_split_han_runs_from_latin() {
        let w: Vec<&str> = words("我喜欢pizza, don't you? 42 kwa-heri 안녕하세요")
            .into_iter()
            .map(|(_, w)| w)
            .collect();
        assert_eq!(
            w,
            ["我喜欢", "pizza", "don't", "you", "kwa-heri", "안녕하세요"]
        );
    }

    #[cfg(feature = "langid")]
    mod lingua {
        use super::super::*;

        const ALL: [&str; 7] = ["en", "sw", "yo", "ko", "zh", "de", "id"];

        /// Hand-written responses, one per language, identified among all seven languages and
        /// among {English, that language} (the setting of a fidelity eval).
        #[test]
        fn responses_in_each_language_are_identified() {
            let cases = [
                (
                    "en",
                    "The capital of Kenya is Nairobi, a large city with many people.",
                ),
                (
                    "sw",
                    "Mji mkuu wa Kenya ni Nairobi, ambao ni mji mkubwa wenye watu wengi.",
                ),
                (
                    "yo",
                    "Olú ìlú Kẹ́nyà ni Nairobi, ìlú ńlá tí ó ní ọ̀pọ̀lọpọ̀ ènìyàn.",
                ),
                (
                    "ko",
                    "케냐의 수도는 나이로비이며, 많은 사람들이 사는 큰 도시입니다.",
                ),
                ("zh", "肯尼亚的首都是内罗毕，这是一个人口众多的大城市。"),
                (
                    "de",
                    "Die Hauptstadt von Kenia ist Nairobi, eine große Stadt mit vielen Menschen.",
                ),
                (
                    "id",
                    "Ibu kota Kenya adalah Nairobi, sebuah kota besar dengan banyak penduduk.",
                ),
            ];
            let all = Lingua::new(&ALL).unwrap();
            for (code, text) in cases {
                assert_eq!(all.detect(text).as_deref(), Some(code), "{text}");
                let pair = Lingua::new(&["en", code]).unwrap();
                assert_eq!(pair.detect(text).as_deref(), Some(code), "{text}");
            }
            assert_eq!(all.detect("42 + 7 = 49"), None);
        }

        /// Code-switched sentences written by hand: every switch is between words whose
        /// language is not in doubt.
        #[test]
        fn s_index_of_code_switched_sentences() {
            let id = Lingua::new(&ALL).unwrap();
            let s = |text: &str| {
                let labels = id.word_labels(text);
                (s_index(labels.iter().map(|(_, l)| l.as_deref())), labels)
            };
            // Monolingual: no switch.
            let (v, labels) = s("Mimi ninapenda kusoma vitabu vya historia kila jioni");
            assert_eq!(v, Some(0.0), "{labels:?}");
            // English | Korean | English: 2 switches over 7 boundaries.
            let (v, labels) = s("I really want to eat 김치찌개 tonight please");
            assert_eq!(v, Some(2.0 / 7.0), "{labels:?}");
            // Swahili | English | Swahili (ambiguous short words such as "I" and "and" take
            // their stretch's language): 2 switches over 8 boundaries.
            let (v, labels) = s("Nilikwenda sokoni jana and I bought some fresh matunda");
            assert_eq!(v, Some(2.0 / 8.0), "{labels:?}");
            assert_eq!(labels[5].1.as_deref(), Some("en"), "{labels:?}");
            // Chinese run | English | Chinese run: 2 switches over 2 boundaries.
            let (v, labels) = s("我们明天 definitely 再讨论吧");
            assert_eq!(v, Some(1.0), "{labels:?}");
        }
    }
}
