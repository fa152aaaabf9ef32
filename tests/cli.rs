//! The binary as scripts see it: stdout carries only generated text, bad input gives one
//! line on stderr and a non-zero exit, and a closed pipe is a quiet stop.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{stories260k, wick};
use wick::gguf::{GgufFile, GgufWriter};
use wick::quant::GgmlType;

fn tmp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wick-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Asserts a failure with exit `code` and exactly one line on stderr, with no panic.
fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "stderr should be one line: {err:?}");
    assert!(err.starts_with("wick: error: "), "stderr: {err:?}");
    assert!(
        err.contains(needle),
        "stderr {err:?} should mention {needle:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty(), "nothing on stdout for a failure");
}

fn gen_on(model: &Path) -> Output {
    wick()
        .args(["gen", "-n", "4", "--prompt", "Hi", "-m"])
        .arg(model)
        .output()
        .unwrap()
}

/// stories260K rebuilt with one tensor's type replaced (and data resized to match).
fn retyped(tensor: &str, ty: GgmlType) -> Vec<u8> {
    let f = GgufFile::open(&stories260k()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        w.set(k, v.clone());
    }
    for t in &f.tensors {
        if t.name == tensor {
            let n = ty.bytes_for(t.n_elements()).unwrap() as usize;
            w.add_tensor(&t.name, &t.dims, ty, vec![0u8; n]).unwrap();
        } else {
            w.add_tensor(&t.name, &t.dims, t.ggml_type, f.tensor_data(t))
                .unwrap();
        }
    }
    w.to_vec()
}

#[test]
fn missing_model_file() {
    let out = gen_on(Path::new("/nonexistent/model.gguf"));
    assert_one_line_error(&out, 2, "/nonexistent/model.gguf");
}

#[test]
fn wrong_magic() {
    let mut b = std::fs::read(stories260k()).unwrap();
    b[..4].copy_from_slice(b"GGML");
    assert_one_line_error(&gen_on(&tmp("magic.gguf", &b)), 2, "not a GGUF file");
}

#[test]
fn truncated_files() {
    let b = std::fs::read(stories260k()).unwrap();
    // Inside the header, the metadata, the tensor table, and the tensor data.
    for cut in [0, 3, 10, 23, 100, 5000, 9000, b.len() / 2, b.len() - 1] {
        let p = tmp(&format!("cut{cut}.gguf"), &b[..cut]);
        let out = gen_on(&p);
        assert_one_line_error(&out, 2, "cut");
    }
}

#[test]
fn bit_flipped_files_never_panic() {
    let b = std::fs::read(stories260k()).unwrap();
    let mut seed = 0x2545F4914F6CDD1Du64;
    for i in 0..40 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut m = b.clone();
        // Flips in the first 12 KB: header, metadata and tensor table.
        let at = (seed % 12_000) as usize;
        m[at] ^= 1 << (seed >> 60 & 7);
        let out = gen_on(&tmp(&format!("flip{i}.gguf"), &m));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "flip at {at}: {err}");
        assert!(
            out.status.code().is_some(),
            "flip at {at}: killed by a signal"
        );
        if !out.status.success() {
            assert_eq!(err.lines().count(), 1, "flip at {at}: {err}");
        }
    }
}

#[test]
fn unsupported_tensor_type_is_named() {
    let p = tmp(
        "iq4nl.gguf",
        &retyped("blk.0.attn_q.weight", GgmlType::IQ4_NL),
    );
    assert_one_line_error(&gen_on(&p), 2, "IQ4_NL");
}

#[test]
fn unknown_tensor_type_id_is_named() {
    let mut b = retyped("blk.0.attn_q.weight", GgmlType::F32);
    // The type field follows the name, the dimension count and two dimensions.
    let name = b"blk.0.attn_q.weight";
    let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 16;
    b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    assert_one_line_error(&gen_on(&tmp("type99.gguf", &b)), 2, "99");
}

#[test]
fn prompt_longer_than_context() {
    let out = wick()
        .args([
            "gen",
            "--ctx",
            "8",
            "--prompt",
            &"once upon a time ".repeat(10),
        ])
        .output()
        .unwrap();
    assert_one_line_error(&out, 1, "context");
}

#[test]
fn invalid_utf8_on_stdin() {
    let mut child = wick()
        .args(["gen", "-n", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Once \xff\xfe upon")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_one_line_error(&out, 1, "UTF-8");
}

#[test]
fn prompt_from_stdin() {
    let mut child = wick()
        .args(["gen", "--temp", "0", "-n", "8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Once upon a time")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        ", there was a little girl"
    );
}

#[test]
fn closed_stdout_pipe_is_a_quiet_stop() {
    // Like `wick gen ... | head -c 10`.
    let mut child = wick()
        .args(["gen", "--temp", "0", "--prompt", "Once upon a time"])
        // An inherited stdin that is an open pipe would be read (and waited on) as more prompt.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 10];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}, stderr {err}", out.status);
    assert!(err.is_empty(), "stderr should stay quiet: {err}");
    assert_eq!(&first, b", there wa");
}

#[test]
fn stats_go_to_stderr_only() {
    let out = wick()
        .args([
            "gen",
            "--temp",
            "0",
            "-n",
            "8",
            "--stats",
            "--prompt",
            "Once upon a time",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "load",
        "time to first token",
        "prefill",
        "decode",
        "p50",
        "p99",
    ] {
        assert!(err.contains(needle), "stats should mention {needle}: {err}");
    }
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        ", there was a little girl"
    );
}

#[test]
fn seeded_sampling_is_reproducible() {
    let run = |seed: &str| {
        wick()
            .args([
                "gen", "-n", "30", "--temp", "1", "--seed", seed, "--prompt", "Once",
            ])
            .output()
            .unwrap()
            .stdout
    };
    assert_eq!(run("7"), run("7"));
    assert_ne!(run("7"), run("8"));
}

#[test]
fn tokenize_prints_ids_like_llama_cpp() {
    let out = wick()
        .args(["tokenize", "--no-bos", "Once upon a time"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.starts_with(' ') && s.ends_with('\n'), "{s:?}");
    let ids: Vec<u32> = s.split_whitespace().map(|t| t.parse().unwrap()).collect();
    assert!(
        !ids.is_empty() && !ids.contains(&1),
        "no BOS with --no-bos: {ids:?}"
    );
    let with_bos = wick()
        .args(["tokenize", "Once upon a time"])
        .output()
        .unwrap();
    let s2 = String::from_utf8(with_bos.stdout).unwrap();
    assert!(s2.starts_with(" 1 "), "BOS first: {s2:?}");
}

#[test]
fn info_describes_the_model() {
    let out = wick().arg("info").arg(stories260k()).output().unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("architecture: llama"), "{s}");
    assert!(s.contains("5 layers, dim 64"), "{s}");
    assert!(s.contains("tokenizer.ggml.tokens = ["), "{s}");
    assert!(s.contains("more]"), "long arrays are abbreviated: {s}");
    assert!(s.contains("F32"), "{s}");
}
