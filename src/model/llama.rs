//! The Llama forward pass: RMSNorm, grouped-query attention with RoPE, and a SwiGLU FFN.
//! It reads in one sitting: embed, then for each layer attention and FFN with residuals,
//! then the output head.

use anyhow::{bail, Result};

use super::{Config, Tensor};
use crate::backend::cpu as ops;
use crate::gguf::GgufFile;
use crate::kv::KvCache;
use crate::quant::DotInput;

struct Layer<'a> {
    attn_norm: Tensor<'a>,
    wq: Tensor<'a>,
    wk: Tensor<'a>,
    wv: Tensor<'a>,
    wo: Tensor<'a>,
    ffn_norm: Tensor<'a>,
    w_gate: Tensor<'a>,
    w_up: Tensor<'a>,
    w_down: Tensor<'a>,
}

pub struct Llama<'a> {
    pub config: Config,
    embed: Tensor<'a>,
    layers: Vec<Layer<'a>>,
    output_norm: Tensor<'a>,
    output: Tensor<'a>,
    inv_freq: Vec<f32>,
}

/// Everything one sequence needs while running: activations, scratch, and its KV cache.
/// Allocated once; a forward pass allocates nothing.
pub struct State {
    x: Vec<f32>,
    xb: Vec<f32>,
    q: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
    logits: Vec<f32>,
    dot: DotInput,
    pub kv: KvCache,
}

impl<'a> Llama<'a> {
    pub fn load(f: &'a GgufFile) -> Result<Llama<'a>> {
        let c = Config::from_gguf(f)?;
        let (dim, kv_dim, ffn) = (c.dim, c.kv_dim(), c.ffn_dim);
        let layers = (0..c.n_layers)
            .map(|i| {
                let t = |name: &str, cols, rows| {
                    Tensor::load(f, &format!("blk.{i}.{name}.weight"), cols, rows)
                };
                Ok(Layer {
                    attn_norm: t("attn_norm", dim, 1)?,
                    wq: t("attn_q", dim, dim)?,
                    wk: t("attn_k", dim, kv_dim)?,
                    wv: t("attn_v", dim, kv_dim)?,
                    wo: t("attn_output", dim, dim)?,
                    ffn_norm: t("ffn_norm", dim, 1)?,
                    w_gate: t("ffn_gate", dim, ffn)?,
                    w_up: t("ffn_up", dim, ffn)?,
                    w_down: t("ffn_down", ffn, dim)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = Tensor::load(f, "token_embd.weight", dim, c.vocab_size)?;
        let output = if c.tied_embeddings {
            embed
        } else {
            Tensor::load(f, "output.weight", dim, c.vocab_size)?
        };
        Ok(Llama {
            embed,
            layers,
            output_norm: Tensor::load(f, "output_norm.weight", dim, 1)?,
            output,
            inv_freq: ops::rope_inv_freq(c.rope_dims, c.rope_theta),
            config: c,
        })
    }

    /// Allocates the state for one sequence of up to `ctx` tokens.
    pub fn new_state(&self, ctx: usize) -> State {
        let c = &self.config;
        State {
            x: vec![0.0; c.dim],
            xb: vec![0.0; c.dim],
            q: vec![0.0; c.dim],
            att: vec![0.0; c.dim],
            tmp: vec![0.0; c.dim],
            gate: vec![0.0; c.ffn_dim],
            up: vec![0.0; c.ffn_dim],
            scores: vec![0.0; ctx],
            logits: vec![0.0; c.vocab_size],
            dot: DotInput::default(),
            kv: KvCache::new(c.n_layers, ctx, c.kv_dim()),
        }
    }

    /// Runs token `token` at position `pos`, appending its keys and values to the cache.
    /// Returns the logits for the next token.
    pub fn forward<'s>(&self, s: &'s mut State, token: u32, pos: usize) -> Result<&'s [f32]> {
        self.forward_layers(s, token, pos)?;
        ops::rmsnorm(&mut s.xb, &s.x, &self.output_norm, self.config.rms_eps);
        s.dot.prepare(self.output.ty, &s.xb)?;
        ops::matvec(&mut s.logits, &self.output, &s.dot);
        Ok(&s.logits)
    }

    /// Like `forward`, but skips the output head: for prompt tokens whose logits are unused.
    pub fn forward_no_logits(&self, s: &mut State, token: u32, pos: usize) -> Result<()> {
        self.forward_layers(s, token, pos)
    }

    fn forward_layers(&self, s: &mut State, token: u32, pos: usize) -> Result<()> {
        let c = &self.config;
        if token as usize >= c.vocab_size {
            bail!(
                "token id {token} is outside the vocabulary of {}",
                c.vocab_size
            );
        }
        if pos >= s.kv.capacity() {
            bail!(
                "position {pos} is past the context size {}",
                s.kv.capacity()
            );
        }
        self.embed.dequantize_row(token as usize, &mut s.x);

        for (l, w) in self.layers.iter().enumerate() {
            // Attention block.
            ops::rmsnorm(&mut s.xb, &s.x, &w.attn_norm, c.rms_eps);
            s.dot.prepare(w.wq.ty, &s.xb)?;
            ops::matvec(&mut s.q, &w.wq, &s.dot);
            if w.wk.ty != w.wq.ty {
                s.dot.prepare(w.wk.ty, &s.xb)?;
            }
            let (k, v) = s.kv.slot_mut(l, pos);
            ops::matvec(k, &w.wk, &s.dot);
            if w.wv.ty != w.wk.ty {
                s.dot.prepare(w.wv.ty, &s.xb)?;
            }
            ops::matvec(v, &w.wv, &s.dot);
            ops::rope(&mut s.q, c.head_dim, &self.inv_freq, pos);
            ops::rope(k, c.head_dim, &self.inv_freq, pos);
            ops::attention(
                &mut s.att,
                &s.q,
                &s.kv,
                l,
                pos,
                c.n_heads,
                c.n_kv_heads,
                c.head_dim,
                &mut s.scores,
            );
            s.dot.prepare(w.wo.ty, &s.att)?;
            ops::matvec(&mut s.tmp, &w.wo, &s.dot);
            ops::add(&mut s.x, &s.tmp);

            // Feed-forward block.
            ops::rmsnorm(&mut s.xb, &s.x, &w.ffn_norm, c.rms_eps);
            s.dot.prepare(w.w_gate.ty, &s.xb)?;
            ops::matvec(&mut s.gate, &w.w_gate, &s.dot);
            if w.w_up.ty != w.w_gate.ty {
                s.dot.prepare(w.w_up.ty, &s.xb)?;
            }
            ops::matvec(&mut s.up, &w.w_up, &s.dot);
            ops::swiglu(&mut s.gate, &s.up);
            s.dot.prepare(w.w_down.ty, &s.gate)?;
            ops::matvec(&mut s.tmp, &w.w_down, &s.dot);
            ops::add(&mut s.x, &s.tmp);
        }
        Ok(())
    }
}
