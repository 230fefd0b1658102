//! The toy world: people with facts (pet, favourite colour, city, number of books), arithmetic,
//! lists and copying, stated and asked as *meaning frames*, and four languages that render the
//! same frames:
//!
//! - English, as usual: `Ana has a cat.`, `What pet does Ana have?`
//! - three toy languages, each with its own lexicon, word order and morphology, meant for three
//!   resource levels of pretraining text ([`Lang::tier`]):
//!   - `vel` (high resource): subject-verb-object, an object prefix (`ze-`), a plural prefix
//!     (`ri-`), a place preposition (`bo`), a question particle first (`ki`) and question words
//!     in place: `Ana hapa zemaku.`, `Ki Ana hapa zedapi?`
//!   - `toy` (medium resource): verb final, case suffixes (`-ta` object, `-ro` place), a plural
//!     suffix (`-li`) and a final question particle (`ka`): `Ana misota ome.`,
//!     `Ana ne damuta ome ka?`
//!   - `zir` (low resource): subject-verb-object with an article, a plural suffix (`-en`), a
//!     question particle first (`su`) and question words in place: `Ana avas un kotu.`,
//!     `Su Ana avas kiu besto?`
//!
//! Names, cities and numerals are shared, as proper nouns and digits are between real
//! languages. Translation is exact (parse in one language, render in the other), and an answer
//! is checked by its content ([`atoms`]) in any language.

use std::collections::HashMap;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};

mod parse;

pub use self::parse::{Atom, atoms, parse, translate, word_lang};

/// The languages of the toy world: English and three toy languages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    En,
    Vel,
    Toy,
    Zir,
}

impl Lang {
    /// Every language, English first.
    pub const ALL: [Lang; 4] = [Lang::En, Lang::Vel, Lang::Toy, Lang::Zir];
    /// The toy languages, from the most to the least pretraining text.
    pub const TARGETS: [Lang; 3] = [Lang::Vel, Lang::Toy, Lang::Zir];

    /// The code used in quadruples and results: `en`, `vel`, `toy` or `zir`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Vel => "vel",
            Lang::Toy => "toy",
            Lang::Zir => "zir",
        }
    }

    /// The language of a code.
    pub fn from_code(code: &str) -> Option<Lang> {
        Lang::ALL.into_iter().find(|l| l.code() == code)
    }

    /// Resource level of a toy language in the shipped model's pretraining text (English:
    /// `dominant`).
    pub fn tier(self) -> &'static str {
        match self {
            Lang::En => "dominant",
            Lang::Vel => "high",
            Lang::Toy => "medium",
            Lang::Zir => "low",
        }
    }

    fn grammar(self) -> &'static Grammar {
        match self {
            Lang::En => &EN,
            Lang::Vel => &VEL,
            Lang::Toy => &TOY,
            Lang::Zir => &ZIR,
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::str::FromStr for Lang {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Lang::from_code(s).ok_or_else(|| {
            format!(
                "unknown toy-world language `{s}`; use one of {}",
                Lang::ALL.map(Lang::code).join(", ")
            )
        })
    }
}

pub const NAMES: [&str; 16] = [
    "Ana", "Bela", "Dan", "Eli", "Fen", "Gus", "Ida", "Jon", "Kai", "Lia", "Max", "Nia", "Oto",
    "Pia", "Rex", "Sol",
];
pub const CITIES: [&str; 6] = ["Paro", "Lumo", "Veska", "Doran", "Ithra", "Quel"];

/// Morphology of a language: affixes are stripped to find a stem (outermost first, keeping at
/// least three letters).
#[derive(Debug)]
enum Affixes {
    None,
    Prefixes(&'static [&'static str]),
    Suffixes(&'static [&'static str]),
}

/// Everything a language needs to render and parse the toy world's frames.
#[derive(Debug)]
struct Grammar {
    animals: [&'static str; 6],
    colors: [&'static str; 6],
    /// Every word a template uses besides the content words (stems of inflected ones).
    function: &'static [&'static str],
    /// One template per frame kind (see [`template`]).
    templates: [&'static str; KINDS],
    /// The word joining the last item of a list.
    and: &'static str,
    /// `1 book`, `N books`.
    book: &'static str,
    books: &'static str,
    affixes: Affixes,
}

static EN: Grammar = Grammar {
    animals: ["cat", "dog", "bird", "fish", "horse", "goat"],
    colors: ["red", "blue", "green", "yellow", "black", "white"],
    function: &[
        "has", "a", "likes", "lives", "in", "book", "books", "plus", "minus", "is", "the", "pets",
        "are", "what", "pet", "does", "have", "color", "like", "where", "live", "how", "many",
        "which", "do", "and", "repeat", "these", "words",
    ],
    templates: [
        "{p} has a {a}.",
        "{p} likes {c}.",
        "{p} lives in {t}.",
        "{p} has {nb}.",
        "{n1} plus {n2} is {n3}.",
        "{n1} minus {n2} is {n3}.",
        "The pets are {al}.",
        "{wl}.",
        "What pet does {p} have?",
        "What color does {p} like?",
        "Where does {p} live?",
        "How many books does {p} have?",
        "What is {n1} plus {n2}?",
        "What is {n1} minus {n2}?",
        "Which pets do {pl} have?",
        "Repeat these words: {wl}.",
    ],
    and: "and",
    book: "book",
    books: "books",
    // English plurals (`cats`) are handled in [`stem`].
    affixes: Affixes::None,
};

static VEL: Grammar = Grammar {
    animals: ["maku", "bexo", "fiwe", "gunu", "zaka", "yune"],
    colors: ["ezar", "ulan", "oven", "ikas", "umar", "esil"],
    function: &[
        "hapa", "lubo", "nesi", "bo", "ime", "pa", "kor", "dapi", "ki", "kolu", "kiwo", "kimu",
        "doku", "dawe", "vo",
    ],
    templates: [
        "{p} hapa ze{a}.",
        "{p} lubo ze{c}.",
        "{p} nesi bo {t}.",
        "{p} hapa {nb}.",
        "{n1} pa {n2} ime {n3}.",
        "{n1} kor {n2} ime {n3}.",
        "Ridapi ime {al}.",
        "{wl}.",
        "Ki {p} hapa zedapi?",
        "Ki {p} lubo zekolu?",
        "Ki {p} nesi bo kiwo?",
        "Ki {p} hapa kimu ridoku?",
        "Ki {n1} pa {n2} ime kimu?",
        "Ki {n1} kor {n2} ime kimu?",
        "Ki {pl} hapa ridapi?",
        "Dawe {wl}.",
    ],
    and: "vo",
    book: "doku",
    books: "ridoku",
    affixes: Affixes::Prefixes(&["ze", "ri"]),
};

static TOY: Grammar = Grammar {
    animals: ["miso", "wuna", "tiri", "pesu", "haro", "gobe"],
    colors: ["ruka", "sela", "vire", "jamu", "noko", "tapi"],
    function: &[
        "ome", "lavi", "dema", "eda", "ju", "ko", "sa", "ne", "nemi", "nesu", "ka", "damu", "iro",
        "puka", "mo", "fa", "sapo",
    ],
    templates: [
        "{p} {a}ta ome.",
        "{p} {c}ta lavi.",
        "{p} {t}ro dema.",
        "{p} {nb}ta ome.",
        "{n1} ju {n2} sa {n3} eda.",
        "{n1} ko {n2} sa {n3} eda.",
        "Damuli {al} eda.",
        "{wl}.",
        "{p} ne damuta ome ka?",
        "{p} ne irota lavi ka?",
        "{p} nemi dema ka?",
        "{p} nesu pukalita ome ka?",
        "{n1} ju {n2} sa ne eda ka?",
        "{n1} ko {n2} sa ne eda ka?",
        "{pl} ne damulita ome ka?",
        "{wl} fa sapo.",
    ],
    and: "mo",
    book: "puka",
    books: "pukali",
    // Object, place, plural.
    affixes: Affixes::Suffixes(&["ta", "ro", "li"]),
};

static ZIR: Grammar = Grammar {
    animals: ["kotu", "hundo", "pipa", "fisu", "roso", "kapu"],
    colors: ["rozu", "azu", "verd", "jelo", "nira", "bjan"],
    function: &[
        "avas", "un", "amas", "vivas", "ce", "kun", "sen", "faras", "la", "besto", "esas", "su",
        "kiu", "kolo", "kie", "kiom", "libo", "kiuj", "diru", "kaj",
    ],
    templates: [
        "{p} avas un {a}.",
        "{p} amas {c}.",
        "{p} vivas ce {t}.",
        "{p} avas {nb}.",
        "{n1} kun {n2} faras {n3}.",
        "{n1} sen {n2} faras {n3}.",
        "La bestoen esas {al}.",
        "{wl}.",
        "Su {p} avas kiu besto?",
        "Su {p} amas kiu kolo?",
        "Su {p} vivas kie?",
        "Su {p} avas kiom liboen?",
        "Su {n1} kun {n2} faras kiom?",
        "Su {n1} sen {n2} faras kiom?",
        "Su {pl} avas kiuj bestoen?",
        "Diru {wl}.",
    ],
    and: "kaj",
    book: "libo",
    books: "liboen",
    affixes: Affixes::Suffixes(&["en"]),
};

/// A content word that can be listed or copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Word {
    Animal(u8),
    Color(u8),
}

impl Word {
    fn text(self, lang: Lang) -> &'static str {
        let g = lang.grammar();
        match self {
            Word::Animal(i) => g.animals[i as usize],
            Word::Color(i) => g.colors[i as usize],
        }
    }
}

/// The meaning of one sentence. Statements are answers; `Ask*` are questions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Frame {
    HasPet {
        person: u8,
        animal: u8,
    },
    Likes {
        person: u8,
        color: u8,
    },
    LivesIn {
        person: u8,
        city: u8,
    },
    Books {
        person: u8,
        n: u8,
    },
    Sum {
        a: u8,
        b: u8,
        c: u8,
    },
    Diff {
        a: u8,
        b: u8,
        c: u8,
    },
    /// The pets of several people, in order.
    Pets(Vec<u8>),
    /// Words said back.
    Words(Vec<Word>),
    AskPet {
        person: u8,
    },
    AskColor {
        person: u8,
    },
    AskCity {
        person: u8,
    },
    AskBooks {
        person: u8,
    },
    AskSum {
        a: u8,
        b: u8,
    },
    AskDiff {
        a: u8,
        b: u8,
    },
    AskPets(Vec<u8>),
    AskRepeat(Vec<Word>),
}

/// The kinds of question, as named in results.
pub const QUESTION_KINDS: [&str; 8] = [
    "pet", "color", "city", "books", "sum", "diff", "pets", "repeat",
];

impl Frame {
    /// The question's kind (one of [`QUESTION_KINDS`]); `None` for statements.
    pub fn question_kind(&self) -> Option<&'static str> {
        Some(match self {
            Frame::AskPet { .. } => "pet",
            Frame::AskColor { .. } => "color",
            Frame::AskCity { .. } => "city",
            Frame::AskBooks { .. } => "books",
            Frame::AskSum { .. } => "sum",
            Frame::AskDiff { .. } => "diff",
            Frame::AskPets(_) => "pets",
            Frame::AskRepeat(_) => "repeat",
            _ => return None,
        })
    }
}

/// Template of each frame kind in each language. Placeholders: `{p}` person, `{a}` animal,
/// `{c}` colour, `{t}` city, `{nb}` a number of books (number and noun agree), `{n1}` `{n2}`
/// `{n3}` numbers, `{pl}` a list of people, `{al}` a list of animals, `{wl}` words.
fn template(kind: usize, lang: Lang) -> &'static str {
    lang.grammar().templates[kind]
}

const KINDS: usize = 16;

/// A frame's kind index (into [`template`]) and its slot values by placeholder.
fn slots(frame: &Frame) -> (usize, Vec<(&'static str, Slot)>) {
    use Slot::*;
    match frame {
        Frame::HasPet { person, animal } => {
            (0, vec![("p", Person(*person)), ("a", Animal(*animal))])
        }
        Frame::Likes { person, color } => (1, vec![("p", Person(*person)), ("c", Color(*color))]),
        Frame::LivesIn { person, city } => (2, vec![("p", Person(*person)), ("t", City(*city))]),
        Frame::Books { person, n } => (3, vec![("p", Person(*person)), ("nb", NumBooks(*n))]),
        Frame::Sum { a, b, c } => (4, vec![("n1", Num(*a)), ("n2", Num(*b)), ("n3", Num(*c))]),
        Frame::Diff { a, b, c } => (5, vec![("n1", Num(*a)), ("n2", Num(*b)), ("n3", Num(*c))]),
        Frame::Pets(animals) => (6, vec![("al", Animals(animals.clone()))]),
        Frame::Words(words) => (7, vec![("wl", Words(words.clone()))]),
        Frame::AskPet { person } => (8, vec![("p", Person(*person))]),
        Frame::AskColor { person } => (9, vec![("p", Person(*person))]),
        Frame::AskCity { person } => (10, vec![("p", Person(*person))]),
        Frame::AskBooks { person } => (11, vec![("p", Person(*person))]),
        Frame::AskSum { a, b } => (12, vec![("n1", Num(*a)), ("n2", Num(*b))]),
        Frame::AskDiff { a, b } => (13, vec![("n1", Num(*a)), ("n2", Num(*b))]),
        Frame::AskPets(people) => (14, vec![("pl", People(people.clone()))]),
        Frame::AskRepeat(words) => (15, vec![("wl", Words(words.clone()))]),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Slot {
    Person(u8),
    Animal(u8),
    Color(u8),
    City(u8),
    NumBooks(u8),
    Num(u8),
    People(Vec<u8>),
    Animals(Vec<u8>),
    Words(Vec<Word>),
}

fn frame_from(kind: usize, s: &HashMap<&str, Slot>) -> Option<Frame> {
    use Slot::*;
    let person = || match s.get("p") {
        Some(Person(p)) => Some(*p),
        _ => None,
    };
    let num = |k| match s.get(k) {
        Some(Num(n)) => Some(*n),
        _ => None,
    };
    Some(match kind {
        0 => Frame::HasPet {
            person: person()?,
            animal: match s.get("a")? {
                Animal(a) => *a,
                _ => return None,
            },
        },
        1 => Frame::Likes {
            person: person()?,
            color: match s.get("c")? {
                Color(c) => *c,
                _ => return None,
            },
        },
        2 => Frame::LivesIn {
            person: person()?,
            city: match s.get("t")? {
                City(t) => *t,
                _ => return None,
            },
        },
        3 => Frame::Books {
            person: person()?,
            n: match s.get("nb")? {
                NumBooks(n) => *n,
                _ => return None,
            },
        },
        4 => Frame::Sum {
            a: num("n1")?,
            b: num("n2")?,
            c: num("n3")?,
        },
        5 => Frame::Diff {
            a: num("n1")?,
            b: num("n2")?,
            c: num("n3")?,
        },
        6 => match s.get("al")? {
            Animals(a) => Frame::Pets(a.clone()),
            _ => return None,
        },
        7 => match s.get("wl")? {
            Words(w) => Frame::Words(w.clone()),
            _ => return None,
        },
        8 => Frame::AskPet { person: person()? },
        9 => Frame::AskColor { person: person()? },
        10 => Frame::AskCity { person: person()? },
        11 => Frame::AskBooks { person: person()? },
        12 => Frame::AskSum {
            a: num("n1")?,
            b: num("n2")?,
        },
        13 => Frame::AskDiff {
            a: num("n1")?,
            b: num("n2")?,
        },
        14 => match s.get("pl")? {
            People(p) => Frame::AskPets(p.clone()),
            _ => return None,
        },
        15 => match s.get("wl")? {
            Words(w) => Frame::AskRepeat(w.clone()),
            _ => return None,
        },
        _ => return None,
    })
}

/// `a`, `a and b`, `a, b and c` (with each language's `and`).
fn join_list(items: &[&str], lang: Lang) -> String {
    let and = lang.grammar().and;
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} {and} {last}", init.join(", ")),
    }
}

fn slot_text(slot: &Slot, lang: Lang) -> String {
    match slot {
        Slot::Person(p) => NAMES[*p as usize].into(),
        Slot::Animal(a) => Word::Animal(*a).text(lang).into(),
        Slot::Color(c) => Word::Color(*c).text(lang).into(),
        Slot::City(t) => CITIES[*t as usize].into(),
        Slot::Num(n) => n.to_string(),
        Slot::NumBooks(n) => {
            let g = lang.grammar();
            format!("{n} {}", if *n == 1 { g.book } else { g.books })
        }
        Slot::People(ps) => join_list(
            &ps.iter().map(|p| NAMES[*p as usize]).collect::<Vec<_>>(),
            lang,
        ),
        Slot::Animals(xs) => join_list(
            &xs.iter()
                .map(|a| Word::Animal(*a).text(lang))
                .collect::<Vec<_>>(),
            lang,
        ),
        Slot::Words(ws) => ws
            .iter()
            .map(|w| w.text(lang))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// A sentence's first letter is upper case (names already are).
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The sentence that says `frame` in `lang`.
pub fn render(frame: &Frame, lang: Lang) -> String {
    let (kind, values) = slots(frame);
    let mut out = template(kind, lang).to_string();
    for (name, slot) in &values {
        out = out.replace(&format!("{{{name}}}"), &slot_text(slot, lang));
    }
    capitalize(&out)
}

/// The facts of one generated world: each person's pet, favourite colour, city and books.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct World {
    pub seed: u64,
    pub pets: Vec<u8>,
    pub colors: Vec<u8>,
    pub cities: Vec<u8>,
    pub books: Vec<u8>,
}

/// Largest operand of the arithmetic questions.
pub const MAX_OPERAND: u8 = 9;

impl World {
    /// The world of `seed`: every fact drawn at random.
    pub fn new(seed: u64) -> Self {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = NAMES.len();
        let mut draw = |k: u8, lo: u8| (0..n).map(|_| rng.random_range(lo..k)).collect();
        World {
            seed,
            pets: draw(6, 0),
            colors: draw(6, 0),
            cities: draw(CITIES.len() as u8, 0),
            books: draw(10, 1),
        }
    }

    /// The true answer to a question; `None` for statements.
    pub fn answer(&self, question: &Frame) -> Option<Frame> {
        let p = |person: &u8| *person as usize;
        Some(match question {
            Frame::AskPet { person } => Frame::HasPet {
                person: *person,
                animal: self.pets[p(person)],
            },
            Frame::AskColor { person } => Frame::Likes {
                person: *person,
                color: self.colors[p(person)],
            },
            Frame::AskCity { person } => Frame::LivesIn {
                person: *person,
                city: self.cities[p(person)],
            },
            Frame::AskBooks { person } => Frame::Books {
                person: *person,
                n: self.books[p(person)],
            },
            Frame::AskSum { a, b } => Frame::Sum {
                a: *a,
                b: *b,
                c: a + b,
            },
            Frame::AskDiff { a, b } => Frame::Diff {
                a: *a,
                b: *b,
                c: a.checked_sub(*b)?,
            },
            Frame::AskPets(people) => Frame::Pets(people.iter().map(|q| self.pets[p(q)]).collect()),
            Frame::AskRepeat(words) => Frame::Words(words.clone()),
            _ => return None,
        })
    }

    /// Every fact of the world as a statement.
    pub fn facts(&self) -> Vec<Frame> {
        let mut out = Vec::new();
        for person in 0..NAMES.len() as u8 {
            for q in [
                Frame::AskPet { person },
                Frame::AskColor { person },
                Frame::AskCity { person },
                Frame::AskBooks { person },
            ] {
                out.extend(self.answer(&q));
            }
        }
        out
    }
}

/// A random question of `kind` (one of [`QUESTION_KINDS`]).
pub fn random_question(kind: &str, rng: &mut impl Rng) -> Frame {
    let person = rng.random_range(0..NAMES.len() as u8);
    let (a, b) = (
        rng.random_range(0..=MAX_OPERAND),
        rng.random_range(0..=MAX_OPERAND),
    );
    match kind {
        "pet" => Frame::AskPet { person },
        "color" => Frame::AskColor { person },
        "city" => Frame::AskCity { person },
        "books" => Frame::AskBooks { person },
        "sum" => Frame::AskSum { a, b },
        "diff" => Frame::AskDiff {
            a: a.max(b),
            b: a.min(b),
        },
        "pets" => {
            let n = rng.random_range(2..=3);
            let all: Vec<u8> = (0..NAMES.len() as u8).collect();
            Frame::AskPets(all.choose_multiple(rng, n).copied().collect())
        }
        _ => {
            let n = rng.random_range(2..=4);
            Frame::AskRepeat(
                (0..n)
                    .map(|_| {
                        if rng.random_bool(0.5) {
                            Word::Animal(rng.random_range(0..6))
                        } else {
                            Word::Color(rng.random_range(0..6))
                        }
                    })
                    .collect(),
            )
        }
    }
}

/// A random true statement: a fact of the world or a sum or difference.
pub fn random_statement(world: &World, rng: &mut impl Rng) -> Frame {
    let kind = ["pet", "color", "city", "books", "sum", "diff"]
        .choose(rng)
        .expect("non-empty");
    world
        .answer(&random_question(kind, rng))
        .expect("answerable")
}

#[cfg(test)]
mod tests;
