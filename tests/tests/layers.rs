//! clo-core's layers point one way. Each module sits on a floor; code may use its own floor and
//! those below, never one above (test modules excepted), so no import circle can form between
//! floors. Within `train/`, no two files may use each other, directly or through others.
//!
//! Floors, bottom up: the shared base (errors, file utilities, JSONL, the concurrency helper,
//! the OpenAI client) · `load` (formats in, architectures, the bounds of `limits`, the
//! trainable-weights table, safetensors writing) · `infer` (generation, scoring) · `eval` ·
//! `data` (preparing quadruples) · `train` · `export` (formats out) · `bench` · `toy` · `api`
//! (the server's wire types, which name types of every floor).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn core_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/src")
}

/// The floor of a module path (`load::gguf`, `data::jsonl`, `train`), `None` for names that are
/// not modules of clo-core.
fn floor(module: &str) -> Option<usize> {
    let first = module.split("::").next().unwrap_or(module);
    if module.starts_with("data::jsonl") || first == "jsonl" {
        return Some(0);
    }
    Some(match first {
        "error" | "fsutil" | "parallel" | "openai" | "CoreError" | "Result" => 0,
        "load" | "limits" | "gguf" | "models" | "tokenizer" | "weights" | "pretrained"
        | "Pretrained" | "Summary" => 1,
        "infer" | "score" | "generate" => 2,
        "eval" => 3,
        "data" | "prepare" => 4,
        "train" | "pretrain" => 5,
        "export" => 6,
        "bench" => 7,
        "toy" => 8,
        "api" => 9,
        _ => return None,
    })
}

const FLOORS: [&str; 10] = [
    "base", "load", "infer", "eval", "data", "train", "export", "bench", "toy", "api",
];

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// A file's code without its test module (everything from `#[cfg(test)]` + `mod tests` on, or
/// the whole of a `tests.rs`) and without comments.
fn code(path: &Path) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The module path of a file under `core/src` (`train/step.rs` -> `train::step`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(core_src()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The `crate::a::b` paths a piece of code names (two segments at most).
fn crate_paths(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue; // `clo_crate::`, not ours
        }
        let rest = &code[i + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        if !segs.is_empty() {
            out.insert(segs.iter().take(2).copied().collect::<Vec<_>>().join("::"));
        }
    }
    // `use crate::{a, b}` groups.
    for (i, _) in code.match_indices("crate::{") {
        let rest = &code[i + "crate::{".len()..];
        let group = &rest[..rest.find('}').unwrap_or(rest.len())];
        for item in group.split(',') {
            let item = item.trim();
            if !item.is_empty() {
                out.insert(item.split("::").take(2).collect::<Vec<_>>().join("::"));
            }
        }
    }
    out
}

#[test]
fn no_module_uses_one_on_a_higher_floor() {
    let mut files = Vec::new();
    rust_files(&core_src(), &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let module = module_of(file);
        let Some(own) = floor(&module).or(module.is_empty().then_some(0)) else {
            panic!("{module} has no floor: add it to `floor`");
        };
        for used in crate_paths(&code(file)) {
            if let Some(f) = floor(&used)
                && f > own
            {
                upward.push(format!(
                    "{module} ({}) uses crate::{used} ({})",
                    FLOORS[own], FLOORS[f]
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up a floor:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_circle_between_the_files_of_train() {
    let dir = core_src().join("train");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    let names: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|n| n != "mod")
        .collect();
    // file -> the files of train it names (`super::x`, `crate::train::x`).
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let me = file.file_stem().unwrap().to_string_lossy().into_owned();
        if me == "mod" {
            continue;
        }
        let code = code(file);
        let set = uses.entry(me.clone()).or_default();
        for prefix in ["super::", "crate::train::"] {
            for (i, _) in code.match_indices(prefix) {
                let rest = &code[i + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if names.contains(&name) && name != me {
                    set.insert(name);
                }
            }
            // `use super::{a::X, b::Y}` groups.
            for (i, _) in code.match_indices(&format!("{prefix}{{")) {
                let rest = &code[i + prefix.len() + 1..];
                let group = &rest[..rest.find('}').unwrap_or(rest.len())];
                for item in group.split(',') {
                    let name = item.trim().split("::").next().unwrap_or("").to_string();
                    if names.contains(&name) && name != me {
                        set.insert(name);
                    }
                }
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        n: &str,
        uses: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = path.iter().position(|p| p == n) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in uses.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, uses, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in uses.keys() {
        if let Some(cycle) = visit(n, &uses, &mut Vec::new(), &mut done) {
            panic!("files of train use each other: {}", cycle.join(" -> "));
        }
    }
}
