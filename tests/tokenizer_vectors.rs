//! llama.cpp's tokenizer test vectors: each family's vocabulary-only GGUF, with inputs
//! (`.inp`) and the ids its reference tokenizer gives (`.out`), encoded with
//! add_special=false, parse_special=false.

mod common;

use std::path::{Path, PathBuf};

use wick::gguf::GgufFile;
use wick::tokenizer::{Tokenizer, Utf8Stream};

fn load(gguf: &Path) -> Tokenizer {
    let f = GgufFile::open(gguf).unwrap_or_else(|e| panic!("{}: {e}", gguf.display()));
    Tokenizer::from_gguf(&f).unwrap_or_else(|e| panic!("{}: {e:#}", gguf.display()))
}

/// Reads the `.inp`/`.out` pair at `stem`.inp / `stem`.out.
fn read_cases(stem: &Path) -> Vec<(String, Vec<u32>)> {
    let with_ext = |ext: &str| PathBuf::from(format!("{}.{ext}", stem.display()));
    let inp = std::fs::read_to_string(with_ext("inp")).expect("read .inp");
    let out = std::fs::read_to_string(with_ext("out")).expect("read .out");
    let mut inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    // The file ends with a separator, which leaves an empty piece after it.
    if inputs.last() == Some(&"") {
        inputs.pop();
    }
    let expected: Vec<Vec<u32>> = out
        .strip_suffix('\n')
        .unwrap_or(&out)
        .split('\n')
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("id in .out"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        expected.len(),
        "{}: .inp and .out disagree on the number of cases",
        stem.display()
    );
    inputs
        .into_iter()
        .map(str::to_owned)
        .zip(expected)
        .collect()
}

/// Encodes every case and reports all mismatches before failing.
fn check(tok: &Tokenizer, stem: &Path) {
    let cases = read_cases(stem);
    let mut failures = Vec::new();
    for (text, want) in &cases {
        match tok.encode(text, false, false) {
            Ok(got) if &got == want => {}
            Ok(got) => failures.push(format!(
                "input {text:?}\n  expected {want:?}\n  got      {got:?}"
            )),
            Err(e) => failures.push(format!("input {text:?}\n  error {e:#}")),
        }
    }
    if !failures.is_empty() {
        panic!(
            "{}: {} of {} cases differ:\n{}",
            stem.display(),
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
    eprintln!("{}: all {} cases match", stem.display(), cases.len());
}

fn family(name: &str) {
    let gguf = common::fetched(&format!("vocab/ggml-vocab-{name}.gguf"));
    check(&load(&gguf), &gguf);
}

#[test]
fn llama_spm() {
    family("llama-spm");
}

#[test]
fn llama_bpe() {
    family("llama-bpe");
}

#[test]
fn gpt_2() {
    family("gpt-2");
}

#[test]
fn qwen2() {
    family("qwen2");
}

#[test]
fn smollm() {
    let tok = load(&common::smollm2());
    let inp = common::repo_file("tests/fixtures/ggml-vocab-smollm.gguf.inp");
    check(&tok, &inp.with_extension(""));
}

#[test]
fn phi_3() {
    family("phi-3");
}

#[test]
fn starcoder() {
    family("starcoder");
}

#[test]
fn deepseek_coder() {
    family("deepseek-coder");
}

#[test]
fn deepseek_llm() {
    family("deepseek-llm");
}

#[test]
fn falcon() {
    family("falcon");
}

#[test]
fn mpt() {
    family("mpt");
}

#[test]
fn refact() {
    family("refact");
}

#[test]
fn command_r() {
    family("command-r");
}

#[test]
fn qwen35() {
    family("qwen35");
}

// --- the API on the committed and fetched models ---

#[test]
fn stories260k_pieces_and_bytes() {
    let tok = load(&common::stories260k());
    assert_eq!(tok.model_kind(), "llama");
    assert_eq!(tok.vocab_size(), 512);
    let find = |p: &str| {
        (0..512u32)
            .find(|&i| tok.piece(i) == p)
            .unwrap_or_else(|| panic!("no piece {p:?}"))
    };
    assert_eq!(tok.token_bytes(find("<0x0A>")), b"\n");
    assert_eq!(tok.token_bytes(find("▁the")), b" the");
    // Right after BOS, the prefixed space is dropped; elsewhere it stays.
    let the = find("▁the");
    assert_eq!(tok.token_bytes_after(tok.bos(), the), b"the");
    assert_eq!(tok.token_bytes_after(Some(the), the), b" the");
    // BOS and EOS are control tokens: no output.
    assert_eq!(tok.token_bytes(1), b"");
    assert!(tok.is_eog(2));
    assert!(!tok.is_eog(the));
}

#[test]
fn stories260k_encode_adds_bos() {
    let tok = load(&common::stories260k());
    assert!(tok.adds_bos());
    assert_eq!(tok.bos(), Some(1));
    let ids = tok.encode("Hello world", true, false).expect("encode");
    assert_eq!(ids.first(), Some(&1));
    let no_bos = tok.encode("Hello world", false, false).expect("encode");
    assert_eq!(&ids[1..], &no_bos[..]);
    // Decoding gives the text back (the space prefixed at the start is dropped after BOS).
    let mut text = String::new();
    let mut stream = Utf8Stream::new();
    let mut prev = None;
    for &id in &ids {
        stream.push(tok.token_bytes_after(prev, id), &mut text);
        prev = Some(id);
    }
    stream.finish(&mut text);
    assert_eq!(text, "Hello world");
    assert_eq!(
        tok.encode("", false, false).expect("encode"),
        Vec::<u32>::new()
    );
}

#[test]
fn smollm2_parse_special() {
    let tok = load(&common::smollm2());
    assert_eq!(tok.model_kind(), "gpt2");
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert!(!tok.adds_bos());
    assert_eq!(
        tok.encode("<|im_start|>", false, true).expect("encode"),
        vec![1]
    );
    let plain = tok.encode("<|im_start|>", false, false).expect("encode");
    assert!(plain.len() > 1, "{plain:?}");
    assert!(!plain.contains(&1));
    assert!(tok.is_eog(2), "<|im_end|> ends generation");
    assert_eq!(tok.token_bytes(2), b"");
    let ids = tok
        .encode("<|im_start|>user\nHi<|im_end|>\n", true, true)
        .expect("encode");
    assert_eq!(ids.first(), Some(&1));
    assert!(ids.contains(&2));
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&i| tok.token_bytes(i).to_vec())
        .collect();
    assert_eq!(bytes, b"user\nHi\n");
}
