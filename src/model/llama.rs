//! The Llama forward pass: RMSNorm, grouped-query attention with RoPE, and a SwiGLU FFN.
//! It reads in one sitting: embed, then for each layer attention and FFN with residuals,
//! then the output head. It runs a batch of consecutive tokens at once (a prompt, or a
//! single decode token), so prefill is a matrix-matrix product.

use anyhow::{bail, Result};

use super::{Config, Tensor};
use crate::backend::cpu::{self as ops, AttnShape, Cpu};
use crate::gguf::GgufFile;
use crate::kv::KvCache;
use crate::quant::{DotInput, GgmlType, Precision};

/// Tokens per forward pass during prefill. Big enough that each weight row is reused from
/// cache many times, small enough that the activations stay in L2.
pub const MAX_BATCH: usize = 64;

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
    cpu: Cpu,
}

/// Everything one sequence needs while running: activations for a batch, scratch, and its
/// KV cache. Allocated once; a forward pass allocates nothing.
pub struct State {
    x: Vec<f32>,
    xb: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
    logits: Vec<f32>,
    dot: DotInput,
    pub kv: KvCache,
}

impl State {
    /// The logits of the last forward pass that asked for them.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
}

impl<'a> Llama<'a> {
    pub fn load(f: &'a GgufFile, n_threads: usize) -> Result<Llama<'a>> {
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
            cpu: Cpu::new(n_threads),
        })
    }

    pub fn n_threads(&self) -> usize {
        self.cpu.n_threads()
    }

    /// Allocates the state for one sequence of up to `ctx` tokens.
    pub fn new_state(&self, ctx: usize) -> State {
        self.new_state_with(ctx, Precision::Fast)
    }

    /// Like `new_state`, choosing how activations meet weights.
    pub fn new_state_with(&self, ctx: usize, precision: Precision) -> State {
        let c = &self.config;
        let b = MAX_BATCH;
        State {
            x: vec![0.0; b * c.dim],
            xb: vec![0.0; b * c.dim],
            q: vec![0.0; b * c.dim],
            k: vec![0.0; b * c.kv_dim()],
            v: vec![0.0; b * c.kv_dim()],
            att: vec![0.0; b * c.dim],
            tmp: vec![0.0; b * c.dim],
            gate: vec![0.0; b * c.ffn_dim],
            up: vec![0.0; b * c.ffn_dim],
            scores: vec![0.0; self.cpu.n_threads() * ctx],
            logits: vec![0.0; c.vocab_size],
            dot: DotInput::new(precision),
            kv: KvCache::new(c.n_layers, ctx, c.kv_dim()),
        }
    }

    /// Runs `tokens` (at most `MAX_BATCH`) at positions `pos0..`, appending their keys and
    /// values to the cache. With `want_logits`, returns the logits after the last token.
    pub fn forward<'s>(
        &self,
        s: &'s mut State,
        tokens: &[u32],
        pos0: usize,
        want_logits: bool,
    ) -> Result<&'s [f32]> {
        let c = &self.config;
        let n = tokens.len();
        if n == 0 || n > MAX_BATCH {
            bail!("a forward pass takes 1 to {MAX_BATCH} tokens, not {n}");
        }
        if pos0 + n > s.kv.capacity() {
            bail!(
                "position {} is past the context size {}",
                pos0 + n - 1,
                s.kv.capacity()
            );
        }
        let (dim, kv_dim, ffn) = (c.dim, c.kv_dim(), c.ffn_dim);
        let shape = AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        };
        let x = &mut s.x[..n * dim];
        for (&tok, row) in tokens.iter().zip(x.chunks_exact_mut(dim)) {
            if tok as usize >= c.vocab_size {
                bail!(
                    "token id {tok} is outside the vocabulary of {}",
                    c.vocab_size
                );
            }
            self.embed.dequantize_row(tok as usize, row);
        }
        let xb = &mut s.xb[..n * dim];
        let (q, k, v) = (
            &mut s.q[..n * dim],
            &mut s.k[..n * kv_dim],
            &mut s.v[..n * kv_dim],
        );
        let (att, tmp) = (&mut s.att[..n * dim], &mut s.tmp[..n * dim]);
        let (gate, up) = (&mut s.gate[..n * ffn], &mut s.up[..n * ffn]);

        for (l, w) in self.layers.iter().enumerate() {
            // Attention block.
            ops::rmsnorm(xb, x, &w.attn_norm, c.rms_eps);
            prepare(&mut s.dot, w.wq.ty, xb, dim, false)?;
            self.cpu.matmul(q, &w.wq, &s.dot);
            prepare(&mut s.dot, w.wk.ty, xb, dim, true)?;
            self.cpu.matmul(k, &w.wk, &s.dot);
            prepare(&mut s.dot, w.wv.ty, xb, dim, true)?;
            self.cpu.matmul(v, &w.wv, &s.dot);
            for b in 0..n {
                let pos = pos0 + b;
                ops::rope(
                    &mut q[b * dim..(b + 1) * dim],
                    c.head_dim,
                    &self.inv_freq,
                    pos,
                );
                let kb = &mut k[b * kv_dim..(b + 1) * kv_dim];
                ops::rope(kb, c.head_dim, &self.inv_freq, pos);
                let (ks, vs) = s.kv.slot_mut(l, pos);
                ks.copy_from_slice(kb);
                vs.copy_from_slice(&v[b * kv_dim..(b + 1) * kv_dim]);
            }
            self.cpu
                .attention(att, q, &s.kv, l, pos0, shape, &mut s.scores);
            prepare(&mut s.dot, w.wo.ty, att, dim, false)?;
            self.cpu.matmul(tmp, &w.wo, &s.dot);
            ops::add(x, tmp);

            // Feed-forward block.
            ops::rmsnorm(xb, x, &w.ffn_norm, c.rms_eps);
            prepare(&mut s.dot, w.w_gate.ty, xb, dim, false)?;
            self.cpu.matmul(gate, &w.w_gate, &s.dot);
            prepare(&mut s.dot, w.w_up.ty, xb, dim, true)?;
            self.cpu.matmul(up, &w.w_up, &s.dot);
            ops::swiglu(gate, up);
            prepare(&mut s.dot, w.w_down.ty, gate, ffn, false)?;
            self.cpu.matmul(tmp, &w.w_down, &s.dot);
            ops::add(x, tmp);
        }

        if !want_logits {
            return Ok(&[]);
        }
        let last = &x[(n - 1) * dim..];
        ops::rmsnorm(&mut xb[..dim], last, &self.output_norm, c.rms_eps);
        prepare(&mut s.dot, self.output.ty, &xb[..dim], dim, false)?;
        self.cpu.matmul(&mut s.logits, &self.output, &s.dot);
        Ok(&s.logits)
    }
}

/// Converts `x` for dots with weights of type `t`. With `shared`, `dot` may already hold
/// this same `x` from the previous product (q/k/v and gate/up share their input), and is only
/// converted again if the weight types differ.
fn prepare(dot: &mut DotInput, t: GgmlType, x: &[f32], cols: usize, shared: bool) -> Result<()> {
    if !(shared && dot.ready_for(t)) {
        dot.prepare(t, x, cols)?;
    }
    Ok(())
}
