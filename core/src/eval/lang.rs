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

/// The instruction of an MMMLU-style generated multiple-choice question (paper table 6) and the
/// language's own answer label, accepted besides `Answer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChoicePrompt {
    pub instruction: &'static str,
    pub label: &'static str,
}

/// One language clo can evaluate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Language {
    /// ISO 639-1 code as used in the data files.
    pub code: &'static str,
    pub name: &'static str,
    pub mc: McLabels,
    pub choice: ChoicePrompt,
}

const EN_CHOICE: &str = "Answer the following multiple choice question. Ensure the last line of your response is in the format: 'Answer: $LETTER' (without quotes) where LETTER is one of ABCD. For example, 'Answer: A'.";

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
        choice: ChoicePrompt {
            instruction: EN_CHOICE,
            label: "Answer",
        },
    },
    Language {
        code: "zh",
        name: "Chinese",
        mc: letters("文档", "问题", "答案"),
        choice: ChoicePrompt {
            // Table 6 as printed lost characters in extraction; this is the full sentence
            // (the simple-evals MMMLU wording it abbreviates).
            instruction: "回答以下选择题。确保你的回答的最后一行是以下格式：'答案: $LETTER'（不带引号），其中 LETTER 是 ABCD 之一。例如，'答案: A'。",
            label: "答案",
        },
    },
    Language {
        code: "de",
        name: "German",
        mc: letters("Dokument", "Frage", "Antwort"),
        choice: ChoicePrompt {
            // Not in table 6: clo's translation of the English instruction.
            instruction: "Beantworte die folgende Multiple-Choice-Frage. Achte darauf, dass die letzte Zeile deiner Antwort das Format 'Antwort: $LETTER' (ohne Anführungszeichen) hat, wobei LETTER einer von ABCD ist. Zum Beispiel: 'Antwort: A'.",
            label: "Antwort",
        },
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
        choice: ChoicePrompt {
            instruction: "다음 선택형 질문에 답하십시오. 당신의 응답 마지막 줄을 '답변: $LETTER' (따옴표 제외) 형식으로 작성하십시오. 여기서 LETTER는 ABCD 중 하나입니다. 예를 들어, '답변: A'로 대답하세요.",
            label: "답변",
        },
    },
    Language {
        code: "id",
        name: "Indonesian",
        mc: letters("Dokumen", "Pertanyaan", "Jawaban"),
        choice: ChoicePrompt {
            // Not in table 6: clo's translation of the English instruction.
            instruction: "Jawablah pertanyaan pilihan ganda berikut. Pastikan baris terakhir jawaban Anda dalam format: 'Jawaban: $LETTER' (tanpa tanda kutip) di mana LETTER adalah salah satu dari ABCD. Contoh: 'Jawaban: A'.",
            label: "Jawaban",
        },
    },
    Language {
        code: "sw",
        name: "Swahili",
        mc: letters("Hati", "Swali", "Jibu"),
        choice: ChoicePrompt {
            instruction: "Jibu swali lifuatalo la chaguo nyingi. Hakikisha mstari wa mwisho wa jibu lako uko katika muundo: 'Answer: $LETTER' au 'Jibu: $LETTER' (bila nukuu) ambapo LETTER ni moja ya ABCD. Kwa mfano, 'Answer: A' au 'Jibu: A'.",
            label: "Jibu",
        },
    },
    Language {
        code: "yo",
        name: "Yoruba",
        mc: letters("Iwe", "Ibèèrè", "Idahun"),
        choice: ChoicePrompt {
            // Not in table 6 and no translation of ours: the English instruction, with the
            // table 7 answer indicator also accepted.
            instruction: EN_CHOICE,
            label: "Idahun",
        },
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
