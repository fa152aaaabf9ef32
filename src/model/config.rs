//! Model hyperparameters, read from GGUF metadata (`{arch}.*` keys).

use anyhow::{bail, Context, Result};

use crate::gguf::GgufFile;

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

        Ok(Config {
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

    /// Bytes of KV cache for `ctx` positions (f32 keys and values).
    pub fn kv_bytes(&self, ctx: usize) -> usize {
        2 * self.n_layers * ctx * self.kv_dim() * std::mem::size_of::<f32>()
    }
}
