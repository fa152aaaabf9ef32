//! Shared helpers for the integration tests: where test data lives, and how to run the binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The folder that `scripts/fetch-test-data.sh` fills: `$WICK_TEST_DATA`, or
/// `~/.cache/wick/test-data`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WICK_TEST_DATA") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".cache/wick/test-data")
}

/// A file fetched by `scripts/fetch-test-data.sh`. A missing file fails the test with its
/// name, never skips it.
pub fn fetched(rel: &str) -> PathBuf {
    let p = data_dir().join(rel);
    assert!(
        p.exists(),
        "test data {} is missing: run scripts/fetch-test-data.sh first",
        p.display()
    );
    p
}

/// A file committed under tests/fixtures or models/.
pub fn repo_file(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    assert!(p.exists(), "repository file {} is missing", p.display());
    p
}

pub fn smollm2() -> PathBuf {
    fetched("SmolLM2-135M-Instruct.Q4_1.gguf")
}

pub fn stories260k() -> PathBuf {
    repo_file("models/stories260K.gguf")
}

/// The `wick` binary that cargo built for these tests.
pub fn wick() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_wick"))
}
