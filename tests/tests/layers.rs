//! clo-core's layers point one way. Each module sits on a floor; code may use its own floor and
//! those below, never one above (test modules excepted), so no import circle can form between
//! floors. Within `train/`, no two modules (a file, or a folder of parts) may use each other,
//! directly or through others. And the code keeps its shape: no source file over 700 lines, no
//! function with too many arguments outside the GPU kernels.
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
fn no_circle_between_the_modules_of_train() {
    let dir = core_src().join("train");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    // A module of train is a file `train/x.rs` or a folder `train/x/` (its `mod.rs` and the
    // files of its parts): the name of its first component.
    let top = |file: &Path| -> String {
        let rel = file.strip_prefix(&dir).unwrap();
        let first = rel.iter().next().unwrap().to_string_lossy();
        first.trim_end_matches(".rs").to_string()
    };
    let names: BTreeSet<String> = files
        .iter()
        .map(|f| top(f))
        .filter(|n| n != "mod")
        .collect();
    // module -> the modules of train its files name (`crate::train::x`, and `super::x` from
    // `train/x.rs` or `train/x/mod.rs`, `super::super::x` from a part `train/x/y.rs`).
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let me = top(file);
        if me == "mod" {
            continue;
        }
        let rel = file.strip_prefix(&dir).unwrap();
        let is_part = rel.iter().count() > 1 && file.file_name().is_some_and(|n| n != "mod.rs");
        let up = if is_part { "super::super::" } else { "super::" };
        let code = code(file);
        let set = uses.entry(me.clone()).or_default();
        for prefix in [up, "crate::train::"] {
            for (i, _) in code.match_indices(prefix) {
                if prefix == "super::" && code[i..].starts_with("super::super::") {
                    continue;
                }
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
            panic!("modules of train use each other: {}", cycle.join(" -> "));
        }
    }
}

/// The workspace's source files (Rust, the browser tests, scripts), fixtures and dependencies
/// aside.
fn workspace_sources() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if !matches!(
                    name.as_str(),
                    "fixtures" | "node_modules" | "target" | "dist"
                ) {
                    walk(&p, out);
                }
            } else if [".rs", ".mjs", ".sh", ".py"]
                .iter()
                .any(|x| name.ends_with(x))
            {
                out.push(p);
            }
        }
    }
    for dir in ["core", "native", "web", "shaders", "tests"] {
        walk(&root.join(dir), &mut out);
    }
    out.sort();
    out
}

#[test]
fn no_source_file_is_over_700_lines() {
    let files = workspace_sources();
    assert!(
        files.iter().any(|f| f.ends_with("core/src/lib.rs")),
        "the walk found the sources"
    );
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 700).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(
        long.is_empty(),
        "split these by feature (700 lines at most, tests included):\n{}",
        long.join("\n")
    );
}

/// `clippy::too_many_arguments` is allowed on GPU kernels (a `kernel.rs`, whose launch takes
/// every buffer and size) and on the attention backend extension's backward, whose signature
/// Burn's `backend_extension` macro dispatches tensor by tensor; nowhere else.
#[test]
fn too_many_arguments_only_in_gpu_kernels() {
    let mut found = Vec::new();
    for file in workspace_sources() {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            // Spelled in two parts, so that this file does not find itself.
            if !line.contains(concat!("allow(clippy::", "too_many_arguments")) {
                continue;
            }
            let kernel = file.file_name().is_some_and(|n| n == "kernel.rs");
            let extension = file.ends_with("shaders/src/attention/mod.rs")
                && lines
                    .get(i + 1)
                    .is_some_and(|l| l.trim() == "fn attention_backward(");
            if !kernel && !extension {
                found.push(format!("{}:{}", file.display(), i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "group the arguments into a struct or tuples instead:\n{}",
        found.join("\n")
    );
}
