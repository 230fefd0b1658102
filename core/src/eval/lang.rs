//! The languages evaluation knows, with their field labels (paper table 7).

use crate::error::{CoreError, Result};

/// Labels of a BELEBELE-style prompt in one language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McLabels {
    pub passage: &'static str,
    pub question: &'static str,
    /// Option labels; the scored continuation is `" " + label`.
    pub options: [&'static str; 4],
    /// Between an option's label and its text.
    pub option_sep: &'static str,
    pub answer: &'static str,
}

const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// One language clo can evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Language {
    /// ISO 639-1 code as used in the data files.
    pub code: &'static str,
    pub name: &'static str,
    pub mc: McLabels,
}

const fn letters(passage: &'static str, question: &'static str, answer: &'static str) -> McLabels {
    McLabels {
        passage,
        question,
        options: LETTERS,
        option_sep: ": ",
        answer,
    }
}

/// English (the default) and the paper's six target languages.
pub const LANGUAGES: [Language; 7] = [
    Language {
        code: "en",
        name: "English",
        mc: letters("Passage", "Question", "Answer"),
    },
    Language {
        code: "zh",
        name: "Chinese",
        mc: letters("文档", "问题", "答案"),
    },
    Language {
        code: "de",
        name: "German",
        mc: letters("Dokument", "Frage", "Antwort"),
    },
    Language {
        code: "ko",
        name: "Korean",
        mc: McLabels {
            passage: "문서",
            question: "질문",
            options: ["가)", "나)", "다)", "라)"],
            option_sep: " ",
            answer: "정답",
        },
    },
    Language {
        code: "id",
        name: "Indonesian",
        mc: letters("Dokumen", "Pertanyaan", "Jawaban"),
    },
    Language {
        code: "sw",
        name: "Swahili",
        mc: letters("Hati", "Swali", "Jibu"),
    },
    Language {
        code: "yo",
        name: "Yoruba",
        mc: letters("Iwe", "Ibèèrè", "Idahun"),
    },
];

/// The language of a code, or an error listing the known codes.
pub fn language(code: &str) -> Result<&'static Language> {
    LANGUAGES.iter().find(|l| l.code == code).ok_or_else(|| {
        CoreError::Invalid(format!(
            "unknown language code `{code}`; known: {}",
            LANGUAGES.map(|l| l.code).join(", ")
        ))
    })
}
