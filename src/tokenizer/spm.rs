//! SentencePiece-style vocabularies (`tokenizer.ggml.model = "llama"`).
//!
//! llama.cpp tokenizes these by starting from single characters and repeatedly merging the
//! adjacent pair whose concatenation is a token with the highest score (ties: leftmost);
//! characters that are not tokens become `<0xXX>` byte tokens. A BPE model reproduces that
//! when every way of splitting a token into two tokens is a merge, ranked by the score of
//! the token it makes (as Hugging Face's LlamaConverter does), with byte fallback on.

use tokenizers::models::bpe::{Vocab, BPE};

/// Builds the BPE model for a SentencePiece vocabulary.
pub fn build_model(tokens: &[String], scores: &[f32], unk: Option<&str>) -> anyhow::Result<BPE> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .rev() // so that for a duplicated string the first id wins, as in a lookup by text
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();

    // (score, id of the merged token, left, right)
    let mut merges: Vec<(f32, u32, &str, &str)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        if vocab.get(t.as_str()) != Some(&(id as u32)) {
            continue; // a duplicate: it can never be produced by a lookup
        }
        for (split, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(split);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id as u32, l, r));
            }
        }
    }
    // Highest score first. Equal scores keep token-id order: llama.cpp breaks such ties by
    // position instead, which a rank cannot express, but real vocabularies have distinct
    // scores for the tokens that merges produce.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let merges = merges
        .into_iter()
        .map(|(_, _, l, r)| (l.to_string(), r.to_string()))
        .collect();

    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u.to_string()).fuse_unk(true);
    }
    builder
        .build()
        .map_err(|e| anyhow::anyhow!("building the SentencePiece model: {e}"))
}

/// The bytes a SentencePiece piece stands for: "▁" is a space.
pub fn piece_bytes(piece: &str) -> Vec<u8> {
    piece.replace('\u{2581}', " ").into_bytes()
}

/// The byte of a `<0xXX>` byte-fallback token.
pub fn byte_token_value(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}
