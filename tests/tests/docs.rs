//! The README and the book (`docs/`): every relative link names a file that exists and, for a
//! Markdown file, a heading that exists in it (anchors as GitHub and mdBook make them); the
//! book's SUMMARY lists every chapter; the README stays a short page.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut code = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                code = !code;
                return false;
            }
            !code
        })
        .collect()
}

/// A heading's anchor: lowercase, letters, digits, `-` and `_` kept, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    prose(&text)
        .into_iter()
        .filter_map(|l| {
            let hashes = l.chars().take_while(|&c| c == '#').count();
            (1..=6)
                .contains(&hashes)
                .then(|| l[hashes..].strip_prefix(' '))
                .flatten()
                .map(slug)
        })
        .collect()
}

/// The targets of `[text](target)` links in the prose of `text`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].to_string());
            rest = &after[end..];
        }
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs/src")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    files.sort();
    files
}

#[test]
fn every_relative_link_of_the_readme_and_the_book_resolves() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for target in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let dest = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            if !dest.exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
                continue;
            }
            if let Some(anchor) = anchor
                && dest.extension().is_some_and(|x| x == "md")
                && !anchors(&dest).contains(anchor)
            {
                broken.push(format!("{}: {target} (no such heading)", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_summary_lists_every_chapter_and_the_readme_is_short() {
    let summary = std::fs::read_to_string(root().join("docs/src/SUMMARY.md")).unwrap();
    let listed: BTreeSet<String> = links(&summary).into_iter().collect();
    for file in markdown_files() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if file.ends_with("README.md") || name == "SUMMARY.md" {
            continue;
        }
        assert!(listed.contains(&name), "SUMMARY.md does not list {name}");
    }
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines < 250,
        "README.md has {lines} lines; the book holds the reference"
    );
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("`clo serve`: the web UI and the API"),
        "clo-serve-the-web-ui-and-the-api"
    );
    assert_eq!(
        slug("GGUF: models from and for llama.cpp, Ollama and LM Studio"),
        "gguf-models-from-and-for-llamacpp-ollama-and-lm-studio"
    );
}

/// mdBook: `CLO_MDBOOK`, else `target/tools/mdbook` (where `.ci/setup` puts it), else on PATH.
fn mdbook() -> PathBuf {
    if let Some(p) = std::env::var_os("CLO_MDBOOK") {
        return PathBuf::from(p);
    }
    let local = root().join("target/tools/mdbook");
    if local.exists() {
        return local;
    }
    PathBuf::from("mdbook")
}

#[test]
fn the_book_builds_every_chapter_without_warnings() {
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(mdbook())
        .arg("build")
        .arg(root().join("docs"))
        .arg("--dest-dir")
        .arg(out.path())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running {}: {e}\nHINT: `bash .ci/setup` installs mdBook in target/tools",
                mdbook().display()
            )
        });
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "mdbook build failed:\n{log}");
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "mdbook warned:\n{log}"
    );
    let summary = std::fs::read_to_string(root().join("docs/src/SUMMARY.md")).unwrap();
    let chapters: Vec<String> = links(&summary);
    assert!(chapters.len() > 10, "SUMMARY.md lists the chapters");
    for chapter in chapters {
        let html = out.path().join(chapter.replace(".md", ".html"));
        let page = std::fs::read_to_string(&html)
            .unwrap_or_else(|e| panic!("{} was not built: {e}", html.display()));
        assert!(page.contains("<h1"), "{} has no title", html.display());
    }
}
