//! Model hyperparameters, read from GGUF metadata (`{arch}.*` keys).

use anyhow::{bail, Context, Result};

use crate::gguf::GgufFile;
use crate::kv::{KvLayout, KvSettings};

/// Architectures whose forward pass wick implements.
pub const SUPPORTED_ARCHS: &[&str] = &["llama"];

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub arch: String,
    pub n_layers: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Dimensions of each head that RoPE rotates (usually all of them).
    pub rope_dims: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// The context the model was trained with.
    pub train_ctx: usize,
    pub vocab_size: usize,
    /// True when there is no `output.weight` and the embedding table doubles as the output.
    pub tied_embeddings: bool,
    /// `{arch}.attention.sliding_window`: layers that have a window attend only to that
    /// many of the latest positions.
    pub sliding_window: Option<usize>,
    /// Which layers have the window (`{arch}.attention.sliding_window_pattern`; all of
    /// them when the key is absent).
    pub swa_layers: Vec<bool>,
}

impl Config {
    pub fn from_gguf(f: &GgufFile) -> Result<Config> {
        let arch = f
            .get_str("general.architecture")
            .context("metadata key general.architecture is missing")?
            .to_string();
        if !SUPPORTED_ARCHS.contains(&arch.as_str()) {
            bail!(
                "architecture {arch:?} is not supported (wick runs: {})",
                SUPPORTED_ARCHS.join(", ")
            );
        }
        let req = |key: &str| -> Result<usize> {
            let full = format!("{arch}.{key}");
            let v = f
                .get_u64(&full)
                .with_context(|| format!("metadata key {full} is missing or not an integer"))?;
            usize::try_from(v)
                .ok()
                .filter(|&v| v > 0 && v < 1 << 31)
                .with_context(|| format!("metadata key {full} has an invalid value {v}"))
        };
        let opt_f = |key: &str, default: f32| -> f32 {
            f.get_f64(&format!("{arch}.{key}"))
                .map(|v| v as f32)
                .unwrap_or(default)
        };

        let n_layers = req("block_count")?;
        let dim = req("embedding_length")?;
        let ffn_dim = req("feed_forward_length")?;
        let n_heads = req("attention.head_count")?;
        let n_kv_heads = req("attention.head_count_kv").unwrap_or(n_heads);
        if dim % n_heads != 0 {
            bail!("embedding length {dim} is not a multiple of the head count {n_heads}");
        }
        if n_heads % n_kv_heads != 0 {
            bail!("head count {n_heads} is not a multiple of the KV head count {n_kv_heads}");
        }
        let head_dim = dim / n_heads;
        let rope_dims = req("rope.dimension_count").unwrap_or(head_dim);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            bail!("rope dimension count {rope_dims} does not fit the head size {head_dim}");
        }
        let rope_theta = opt_f("rope.freq_base", 10000.0);
        let rms_eps = opt_f("attention.layer_norm_rms_epsilon", 1e-5);
        let train_ctx = req("context_length").unwrap_or(2048);

        let embd = f
            .tensor("token_embd.weight")
            .context("tensor token_embd.weight is missing")?;
        if embd.dims.len() != 2 || embd.dims[0] != dim as u64 {
            bail!(
                "token_embd.weight has shape {:?}, expected [{dim}, vocab]",
                embd.dims
            );
        }
        let vocab_size = embd.dims[1] as usize;
        let tied_embeddings = f.tensor("output.weight").is_none();

        let sliding_window = f
            .get_u64(&format!("{arch}.attention.sliding_window"))
            .filter(|&w| w > 0)
            .map(|w| w as usize);
        let swa_layers = swa_pattern(f, &arch, n_layers)?;

        Ok(Config {
            sliding_window,
            swa_layers,
            arch,
            n_layers,
            dim,
            ffn_dim,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dims,
            rope_theta,
            rms_eps,
            train_ctx,
            vocab_size,
            tied_embeddings,
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The window of layer `l`, if it has one.
    pub fn layer_window(&self, l: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.swa_layers[l])
    }

    /// The cache layout of every layer under the user's settings.
    pub fn kv_layouts(&self, s: &KvSettings) -> Vec<KvLayout> {
        (0..self.n_layers)
            .map(|l| KvLayout::new(s, self.layer_window(l)))
            .collect()
    }

    /// Bytes of KV cache under the user's settings.
    pub fn kv_bytes(&self, s: &KvSettings) -> usize {
        self.kv_layouts(s)
            .iter()
            .map(|l| l.bytes(self.kv_dim()))
            .sum()
    }
}

/// llama.cpp's two spellings of the pattern: an integer `n` (in every `n` layers, all but
/// the last have the window), or one bool per layer.
fn swa_pattern(f: &GgufFile, arch: &str, n_layers: usize) -> Result<Vec<bool>> {
    let key = format!("{arch}.attention.sliding_window_pattern");
    if let Some(n) = f.get_u64(&key) {
        let n = n as usize;
        return Ok((0..n_layers).map(|l| n == 0 || l % n < n - 1).collect());
    }
    if let Some(items) = f.get_array(&key) {
        let v: Option<Vec<bool>> = items.iter().map(|v| v.as_bool()).collect();
        match v {
            Some(v) if v.len() == n_layers => return Ok(v),
            _ => bail!("metadata key {key} is not one bool per layer"),
        }
    }
    Ok(vec![true; n_layers])
}
