//! Helpers the CLI test files share: the fixtures' folder, paths as `&str`, and the check that
//! clo refused something with a reported error.
#![allow(dead_code)] // each test file uses its own share

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails unless clo exited with 1 (an error it reports), not 101 (a panic), 134 (an abort) or a
/// signal; returns stderr.
pub fn refused(out: &Output) -> String {
    let text = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a reported error (exit 1), got {:?}:\n{text}",
        out.status
    );
    assert!(text.contains("error: "), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    text
}

/// Runs the built `clo` with `args`.
pub fn clo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clo"))
        .args(args)
        .output()
        .unwrap()
}
