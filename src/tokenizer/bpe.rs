//! GPT-2-style byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`).
//!
//! Tokens are written in GPT-2's byte-level alphabet: every byte is one printable character
//! (a space is "Ġ", a newline "Ċ"). Merges come ranked from the file.

use tokenizers::models::bpe::{Vocab, BPE};

/// Builds the BPE model from the vocabulary and `tokenizer.ggml.merges` ("left right").
pub fn build_model(tokens: &[String], merges: &[&str], ignore_merges: bool) -> anyhow::Result<BPE> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .rev() // so that for a duplicated string the first id wins
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();

    let mut pairs = Vec::with_capacity(merges.len());
    let mut seen = std::collections::HashSet::with_capacity(merges.len());
    let mut skipped = 0usize;
    let mut whole = String::new();
    for m in merges {
        // Split at the first space after the first character, as llama.cpp does, so that a
        // left part that is itself a space still parses.
        let first = m.chars().next().map_or(0, char::len_utf8);
        let Some(pos) = m[first..].find(' ').map(|p| p + first) else {
            skipped += 1;
            continue;
        };
        let (l, r) = (&m[..pos], &m[pos + 1..]);
        // The tokenizers crate rejects merges whose parts or result are not tokens; such a
        // merge could only make a piece that is not a token, so it is dropped.
        whole.clear();
        whole.push_str(l);
        whole.push_str(r);
        let (Some(&li), Some(&ri), true) = (vocab.get(l), vocab.get(r), vocab.contains_key(&whole))
        else {
            skipped += 1;
            continue;
        };
        // A repeated pair keeps its first (best) rank.
        if seen.insert((li, ri)) {
            pairs.push((l.to_string(), r.to_string()));
        }
    }
    // Real files carry such merges by the ten thousand (SmolLM2: 32,720) and tokenize
    // exactly as llama.cpp does without them, so they are dropped silently.
    let _ = skipped;
    BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| anyhow::anyhow!("building the BPE model: {e}"))
}

/// Whether GPT-2's byte-level alphabet writes byte `b` as the character with the same code.
// `RangeInclusive::contains` is not const.
#[allow(clippy::manual_range_contains)]
const fn is_printable(b: u32) -> bool {
    (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)
}

/// Byte-level character code (below 256 + 68) → byte + 1 (0: not in the alphabet). The 68
/// other bytes map, in order, to U+0100 and up.
const CHAR_TO_BYTE: [u16; 324] = {
    let mut t = [0u16; 324];
    let mut next = 256;
    let mut b = 0;
    while b < 256 {
        if is_printable(b) {
            t[b as usize] = b as u16 + 1;
        } else {
            t[next] = b as u16 + 1;
            next += 1;
        }
        b += 1;
    }
    t
};

/// The inverse of GPT-2's `bytes_to_unicode`: byte-level character → byte.
pub fn char_to_byte(c: char) -> Option<u8> {
    match CHAR_TO_BYTE.get(c as usize) {
        Some(&v) if v > 0 => Some((v - 1) as u8),
        _ => None,
    }
}

/// The bytes a byte-level token stands for. A character outside the byte-level alphabet
/// (not expected in a well-formed vocabulary) is kept as its UTF-8.
pub fn piece_bytes(piece: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(piece.len());
    for c in piece.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet() {
        assert_eq!(char_to_byte('a'), Some(b'a'));
        assert_eq!(char_to_byte('Ġ'), Some(b' '));
        assert_eq!(char_to_byte('Ċ'), Some(b'\n'));
        assert_eq!(char_to_byte('\u{100}'), Some(0));
        assert_eq!(piece_bytes("Ġhello"), b" hello");
        // All 256 bytes round-trip.
        let mut seen = [false; 256];
        for c in (0u32..400).filter_map(char::from_u32) {
            if let Some(b) = char_to_byte(c) {
                assert!(!seen[b as usize]);
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}
