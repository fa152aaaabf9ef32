//! The prompt cache file: the tokens of a prompt and the cache rows they left, so that a
//! later run with the same prefix skips computing it again.
//!
//! Layout (little-endian): magic `WICKPC02`, the stamp (u64), the token count (u32) and
//! tokens (u32 each), the byte count of the rows (u64) and the rows, then a checksum (u64)
//! of everything before it. The stamp hashes the model's size and header (metadata and
//! tensor table, not the weights) with the cache settings; a file with another stamp,
//! a wrong checksum or a wrong length is refused whole.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::KvSettings;
use crate::gguf::GgufFile;

/// Version 02: Q8_0 keys are stored Hadamard-rotated (src/kv/rotate.rs), so rows of a
/// version 01 file would read as other keys; such a file is refused as not a cache.
const MAGIC: &[u8; 8] = b"WICKPC02";

/// A fast non-cryptographic hash (FxHash's step, eight bytes at a time): it only needs to
/// tell files apart and catch damage, and must not cost much against skipping a prefill.
#[derive(Clone, Copy)]
pub struct Hasher(u64);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher(0xcbf2_9ce4_8422_2325)
    }

    pub fn add(&mut self, bytes: &[u8]) -> &mut Hasher {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap()));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.word(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 56));
        self
    }

    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

/// What a cache file must match: the model (its size and everything before the tensor
/// data), the cache settings, and `compute`, which names how the rows were computed
/// (backend and precision: rows from elsewhere would round differently, and the tokens
/// would no longer be exactly those of a run without the cache).
pub fn stamp(model: &GgufFile, s: &KvSettings, compute: &str) -> u64 {
    let bytes = model.bytes();
    let header = &bytes[..(model.data_offset as usize).min(bytes.len())];
    Hasher::new()
        .add(&(bytes.len() as u64).to_le_bytes())
        .add(header)
        .add(&(s.ctx as u64).to_le_bytes())
        .add(&(s.keep as u64).to_le_bytes())
        .add(&[s.ty.id()])
        .add(&(s.window.map_or(0, |w| w as u64 + 1)).to_le_bytes())
        .add(compute.as_bytes())
        .finish()
}

/// Writes the file through a temporary one and a rename, so a reader never sees half a
/// file, whatever happens while writing.
pub fn save(path: &Path, stamp: u64, tokens: &[u32], rows: &[u8]) -> Result<()> {
    let mut buf = Vec::with_capacity(32 + tokens.len() * 4 + rows.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&stamp.to_le_bytes());
    buf.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
    for t in tokens {
        buf.extend_from_slice(&t.to_le_bytes());
    }
    buf.extend_from_slice(&(rows.len() as u64).to_le_bytes());
    buf.extend_from_slice(rows);
    let sum = Hasher::new().add(&buf).finish();
    buf.extend_from_slice(&sum.to_le_bytes());

    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("cannot write the prompt cache {}", path.display()))
}

/// The tokens and rows of a cache file, or why it cannot be used.
pub fn load(path: &Path, stamp: u64) -> Result<(Vec<u32>, Vec<u8>)> {
    let buf = std::fs::read(path)
        .with_context(|| format!("cannot read the prompt cache {}", path.display()))?;
    parse(&buf, stamp)
}

fn parse(buf: &[u8], want_stamp: u64) -> Result<(Vec<u32>, Vec<u8>)> {
    if buf.len() < 36 || &buf[..8] != MAGIC {
        bail!("it is not a wick prompt cache");
    }
    let (body, sum) = buf.split_at(buf.len() - 8);
    if Hasher::new().add(body).finish() != u64::from_le_bytes(sum.try_into().unwrap()) {
        bail!("it is damaged or truncated");
    }
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap());
    if u64_at(8) != want_stamp {
        bail!("it was made with another model or other --ctx/--keep/--kv-type/--window/--exact/--gpu settings");
    }
    let n = u32::from_le_bytes(body[16..20].try_into().unwrap()) as usize;
    let rows_at = 20 + n * 4;
    if body.len() < rows_at + 8 {
        bail!("it is damaged or truncated");
    }
    let tokens = body[20..rows_at]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let len = usize::try_from(u64_at(rows_at)).unwrap_or(usize::MAX);
    // Checked: a crafted length must not wrap around to the file's size.
    if (rows_at + 8).checked_add(len) != Some(body.len()) {
        bail!("it is damaged or truncated");
    }
    Ok((tokens, body[rows_at + 8..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = std::env::temp_dir().join(format!("wick-pc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.bin");
        save(&p, 42, &[1, 2, 3], &[9; 100]).unwrap();
        let (t, r) = load(&p, 42).unwrap();
        assert_eq!((t, r), (vec![1, 2, 3], vec![9; 100]));
        assert!(load(&p, 43)
            .unwrap_err()
            .to_string()
            .contains("another model"));
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[40] ^= 1;
        assert!(parse(&bytes, 42).is_err());
        bytes[40] ^= 1;
        assert!(parse(&bytes[..bytes.len() - 1], 42).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
