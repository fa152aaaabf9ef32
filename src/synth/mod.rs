//! Synthetic models: GGUF files with the exact shapes, tokenizer and tensor-type mix of a
//! real model, and random weights. They load and run like the real thing, so speed can be
//! measured on any shape without downloading gigabytes.

mod presets;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::gguf::{GgufFile, GgufWriter, Value};
use crate::quant::encode::{encode_rows, EncodeError};
use crate::quant::mix::{tensor_type, FileType, ModelShape};
use crate::quant::{self, GgmlType};

pub use presets::{Preset, TokenizerSource, PRESETS};

/// Standard deviation of the random matrices, as in llama's initialization. With RMSNorm
/// before every matrix, each product has std about 0.02·sqrt(fan-in) (≈ 1.3 for dim 4096,
/// 2.4 for an FFN of 14336): activations grow slowly through the residual stream and stay
/// far from f32 (or f16) limits, even over 32 layers.
pub const WEIGHT_STD: f32 = 0.02;

/// The preset called `name`, hidden ones included.
pub fn find_preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// The names of the presets meant for users.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS
        .iter()
        .filter(|p| !p.hidden)
        .map(|p| p.name)
        .collect()
}

/// Where `scripts/fetch-test-data.sh` puts its files: `$WICK_TEST_DATA`, or
/// `~/.cache/wick/test-data`.
pub fn test_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WICK_TEST_DATA") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".cache/wick/test-data")
}

/// The file a preset takes its tokenizer from when no `--vocab` is given.
pub fn default_vocab_path(p: &Preset) -> PathBuf {
    let dir = test_data_dir();
    match p.tokenizer {
        TokenizerSource::Vocab(family) => dir.join(format!("vocab/ggml-vocab-{family}.gguf")),
        TokenizerSource::Model(file) => dir.join(file),
    }
}

/// The `tokenizer.*` metadata of a GGUF file, and its token count.
pub fn read_tokenizer(f: &GgufFile) -> Result<(Vec<(String, Value)>, usize)> {
    let kv: Vec<(String, Value)> = f
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .cloned()
        .collect();
    let n = f
        .get_array("tokenizer.ggml.tokens")
        .map(<[Value]>::len)
        .context("it has no tokenizer.ggml.tokens")?;
    Ok((kv, n))
}

/// One tensor of a synthetic model and how its values are made.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Norm weights are all 1, like a freshly initialized model; matrices are random.
    pub ones: bool,
}

impl TensorPlan {
    pub fn n_bytes(&self) -> u64 {
        self.ty
            .bytes_for(self.dims.iter().product())
            .unwrap_or_default()
    }
}

/// The metadata and tensor list of a synthetic model: everything but the weights.
pub struct Plan {
    pub writer: GgufWriter<'static>,
    pub tensors: Vec<TensorPlan>,
}

impl Plan {
    pub fn total_bytes(&self) -> u64 {
        self.tensors.iter().map(TensorPlan::n_bytes).sum()
    }
}

/// Lays out a model of shape `p`, quantized as `ftype`, with the given tokenizer metadata.
/// Fails if a tensor would need a type wick cannot encode.
pub fn plan(p: &Preset, ftype: FileType, tokenizer: Vec<(String, Value)>) -> Result<Plan> {
    let shape = ModelShape {
        n_layers: p.n_layers,
        n_gqa: p.n_heads / p.n_kv_heads,
        has_output: !p.tied,
    };
    let head_dim = p.dim / p.n_heads;
    let kv_dim = (p.n_kv_heads * head_dim) as u64;
    let (dim, ffn, vocab) = (p.dim as u64, p.ffn as u64, p.vocab as u64);

    // The order of llama.cpp's converter: embeddings, the layers, then the output head.
    let mut shapes: Vec<(String, Vec<u64>)> = vec![("token_embd.weight".into(), vec![dim, vocab])];
    for i in 0..p.n_layers {
        for (name, dims) in [
            ("attn_norm", vec![dim]),
            ("attn_q", vec![dim, dim]),
            ("attn_k", vec![dim, kv_dim]),
            ("attn_v", vec![dim, kv_dim]),
            ("attn_output", vec![dim, dim]),
            ("ffn_norm", vec![dim]),
            ("ffn_gate", vec![dim, ffn]),
            ("ffn_up", vec![dim, ffn]),
            ("ffn_down", vec![ffn, dim]),
        ] {
            shapes.push((format!("blk.{i}.{name}.weight"), dims));
        }
    }
    shapes.push(("output_norm.weight".into(), vec![dim]));
    if !p.tied {
        shapes.push(("output.weight".into(), vec![dim, vocab]));
    }

    let mut tensors = Vec::with_capacity(shapes.len());
    for (name, dims) in shapes {
        let ty = tensor_type(ftype, &name, &dims, GgmlType::F32, &shape);
        if quant::kernels(ty).is_none() {
            bail!(
                "{name} needs type {ty} in a {} file, and wick cannot encode {ty} yet",
                ftype.name().to_uppercase()
            );
        }
        let ones = dims.len() == 1;
        tensors.push(TensorPlan {
            name,
            dims,
            ty,
            ones,
        });
    }

    let mut w = GgufWriter::new();
    let u32v = |v: usize| Value::U32(v as u32);
    w.set("general.architecture", Value::String("llama".into()));
    w.set(
        "general.name",
        Value::String(format!("synthetic {} (random weights)", p.name)),
    );
    w.set("general.file_type", Value::U32(ftype.llama_ftype()));
    w.set("general.quantization_version", Value::U32(2));
    w.set("llama.context_length", u32v(p.ctx));
    w.set("llama.embedding_length", u32v(p.dim));
    w.set("llama.block_count", u32v(p.n_layers));
    w.set("llama.feed_forward_length", u32v(p.ffn));
    w.set("llama.attention.head_count", u32v(p.n_heads));
    w.set("llama.attention.head_count_kv", u32v(p.n_kv_heads));
    w.set("llama.rope.freq_base", Value::F32(p.rope_theta));
    w.set(
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(p.rms_eps),
    );
    w.set("llama.rope.dimension_count", u32v(head_dim));
    w.set("llama.vocab_size", u32v(p.vocab));
    for (k, v) in tokenizer {
        w.set(&k, v);
    }
    for t in &tensors {
        w.declare_tensor(&t.name, &t.dims, t.ty)?;
    }
    Ok(Plan { writer: w, tensors })
}

/// Writes the planned file to `out`, generating and encoding each tensor on `threads`
/// threads as the writer reaches it. `progress` hears tensor bytes written so far.
pub fn write(
    plan: &Plan,
    seed: u64,
    threads: usize,
    out: &mut impl Write,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    plan.writer.write_streaming(out, |i, w| {
        let t = &plan.tensors[i];
        let cols = t.dims[0] as usize;
        let rows = t.dims[1..].iter().product::<u64>() as usize;
        let name_seed = seed ^ fnv1a(t.name.as_bytes());
        let fill = |r: usize, x: &mut [f32]| {
            if t.ones {
                x.fill(1.0);
            } else {
                random_row(name_seed, r as u64, WEIGHT_STD, x);
            }
            Ok(())
        };
        encode_rows(t.ty, cols, rows, threads, fill, w, &mut progress).map_err(|e| match e {
            EncodeError::Io(e) => e,
            e => io::Error::other(format!("{}: {e}", t.name)),
        })
    })?;
    Ok(())
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e3779b97f4a7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// Fills `x` with roughly normal values of standard deviation `std`, determined by the
/// seed and the row alone, so the file does not depend on the thread count. Each value is
/// the sum of four 16-bit uniforms (Irwin–Hall): close enough to normal for weights, and
/// one random draw per value.
pub fn random_row(seed: u64, row: u64, std: f32, x: &mut [f32]) {
    let mut state = seed ^ row.wrapping_mul(0xd1b54a32d192ed03);
    // Four uniforms on [0, 1) sum to mean 2, variance 4/12.
    let scale = std / (1.0f32 / 3.0).sqrt() / 65536.0;
    for v in x.iter_mut() {
        let r = splitmix64(&mut state);
        let s = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
        *v = (s as f32 - 2.0 * 65536.0) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_rows_have_the_asked_spread() {
        let mut x = vec![0f32; 1 << 16];
        random_row(1, 2, 0.02, &mut x);
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
        let sd = (x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 1e-3, "mean {mean}");
        assert!((sd - 0.02).abs() < 5e-4, "sd {sd}");
        let mut y = vec![0f32; 1 << 16];
        random_row(1, 2, 0.02, &mut y);
        assert_eq!(x, y);
        random_row(1, 3, 0.02, &mut y);
        assert_ne!(x, y);
    }

    #[test]
    fn presets_are_consistent() {
        for p in PRESETS {
            assert_eq!(p.dim % p.n_heads, 0, "{}", p.name);
            assert_eq!(p.n_heads % p.n_kv_heads, 0, "{}", p.name);
            assert!(find_preset(p.name).is_some());
        }
        assert!(preset_names().contains(&"llama3-8b"));
        assert!(!preset_names().contains(&"test-tiny"));
    }

    #[test]
    fn plan_of_llama3_8b() {
        let p = find_preset("llama3-8b").unwrap();
        let plan = plan(p, FileType::F16, Vec::new()).unwrap();
        // 1 + 9 per layer + 2.
        assert_eq!(plan.tensors.len(), 1 + 9 * 32 + 2);
        let params: u64 = plan
            .tensors
            .iter()
            .map(|t| t.dims.iter().product::<u64>())
            .sum();
        assert_eq!(params, 8_030_261_248);
        let v = plan
            .tensors
            .iter()
            .find(|t| t.name == "blk.0.attn_v.weight");
        assert_eq!(v.unwrap().dims, [4096, 1024]);
        assert!(plan
            .tensors
            .iter()
            .all(|t| (t.ty == GgmlType::F32) == (t.dims.len() == 1)));
    }
}
