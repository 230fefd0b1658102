//! The book's command-line reference (`docs/src/cli.md`) is `clo <command> --help` for every
//! command, generated from the binary: this test fails when the two differ. After changing a
//! flag or its help, regenerate the page with
//! `CLO_BLESS=1 cargo test --workspace --features clo/mpi --test cli_reference`.

use std::path::Path;
use std::process::Command;

/// Every command with its own help, as typed after `clo`.
const COMMANDS: [&[&str]; 16] = [
    &[],
    &["score"],
    &["generate"],
    &["inspect"],
    &["prepare"],
    &["train"],
    &["export"],
    &["eval", "mc"],
    &["eval", "gen"],
    &["eval", "judge"],
    &["eval", "report"],
    &["quickstart"],
    &["pretrain"],
    &["serve"],
    &["bench", "train"],
    &["bench", "generate"],
];

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(args)
        .arg("--help")
        // Flags backed by the environment show its value in their help: none here.
        .env_remove("CLO_TOKEN")
        .env_remove("CLO_CACHE_DIR")
        .env("COLUMNS", "100")
        .output()
        .unwrap();
    assert!(out.status.success(), "clo {args:?} --help failed");
    String::from_utf8(out.stdout).unwrap()
}

fn reference() -> String {
    let mut page = String::from(
        "# Command-line reference\n\n\
         Generated from the binary (`clo <command> --help`) by `native/tests/cli_reference.rs`,\n\
         which fails when this page and the binary differ; `CLO_BLESS=1 cargo test --workspace\n\
         --features clo/mpi --test cli_reference` writes it again. Each command's chapter explains\n\
         what the flags do.\n",
    );
    for args in COMMANDS {
        let name = if args.is_empty() {
            "clo".to_string()
        } else {
            format!("clo {}", args.join(" "))
        };
        page += &format!("\n## `{name}`\n\n```text\n{}```\n", help(args));
    }
    page
}

#[test]
fn the_books_cli_reference_is_the_binarys_help() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/src/cli.md");
    let generated = reference();
    if std::env::var_os("CLO_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == generated,
        "docs/src/cli.md is not `clo --help` any more: run `CLO_BLESS=1 cargo test --workspace --features clo/mpi --test cli_reference` and commit it"
    );
}
