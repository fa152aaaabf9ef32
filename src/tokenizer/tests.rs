//! Tokenizer behaviour on small synthetic vocabularies.

use super::Tokenizer;
use crate::gguf::{tag, GgufFile, GgufWriter, Value};

fn strings(v: &[&str]) -> Value {
    Value::Array(
        tag::STRING,
        v.iter().map(|s| Value::String(s.to_string())).collect(),
    )
}

/// A tiny SentencePiece vocabulary, with a user-defined token "<x>".
fn tiny_spm() -> Tokenizer {
    let tokens = [
        "<unk>",
        "<s>",
        "</s>",
        "<0x0A>",
        "▁",
        "a",
        "b",
        "▁a",
        "ab",
        "▁ab",
        "<x>",
        "<|im_end|>",
    ];
    let scores = [
        0.0, 0.0, 0.0, 0.0, -5.0, -6.0, -7.0, -1.0, -2.0, -3.0, 0.0, 0.0,
    ];
    let types = [2, 3, 3, 6, 1, 1, 1, 1, 1, 1, 4, 1];
    let mut w = GgufWriter::new();
    w.set("tokenizer.ggml.model", Value::String("llama".into()));
    w.set("tokenizer.ggml.tokens", strings(&tokens));
    w.set(
        "tokenizer.ggml.scores",
        Value::Array(tag::F32, scores.iter().map(|&s| Value::F32(s)).collect()),
    );
    w.set(
        "tokenizer.ggml.token_type",
        Value::Array(tag::I32, types.iter().map(|&t| Value::I32(t)).collect()),
    );
    let f = GgufFile::from_vec(w.to_vec()).expect("parse");
    Tokenizer::from_gguf(&f).expect("tokenizer")
}

#[test]
fn spm_merges_by_score_with_space_prefix() {
    let t = tiny_spm();
    // "▁a" (score -1) merges before "ab" (-2), then "▁a"+"b" makes "▁ab".
    assert_eq!(t.encode("ab", false, false).unwrap(), vec![9]);
    assert_eq!(t.encode("a\n", false, false).unwrap(), vec![7, 3]);
    assert_eq!(t.encode("ab", true, false).unwrap(), vec![1, 9]);
    assert_eq!(t.encode("", false, false).unwrap(), Vec::<u32>::new());
}

#[test]
fn user_defined_tokens_always_split_and_prefix_space_again() {
    let t = tiny_spm();
    // After a special token llama.cpp prefixes the space again: "b" becomes "▁b".
    assert_eq!(t.encode("a<x>b", false, false).unwrap(), vec![7, 10, 4, 6]);
    assert_eq!(t.token_bytes(10), b"<x>");
}

#[test]
fn eog_by_text_becomes_control() {
    let t = tiny_spm();
    assert!(t.is_eog(2));
    assert!(t.is_eog(11), "<|im_end|> ends generation");
    assert_eq!(t.token_bytes(11), b"");
    assert_eq!(t.token_bytes(1), b"");
    assert_eq!(t.token_bytes(3), b"\n");
    assert_eq!(t.encode("<|im_end|>", false, true).unwrap(), vec![11]);
    assert_eq!(t.token_bytes(999), b"");
    assert_eq!(t.piece(999), "");
}

#[test]
fn unsupported_model_is_named() {
    let mut w = GgufWriter::new();
    w.set("tokenizer.ggml.model", Value::String("bert".into()));
    w.set("tokenizer.ggml.tokens", strings(&["[PAD]"]));
    let f = GgufFile::from_vec(w.to_vec()).expect("parse");
    let err = Tokenizer::from_gguf(&f)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("'bert'"), "{err}");
}
