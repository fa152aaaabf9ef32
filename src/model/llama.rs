//! The Llama forward pass: RMSNorm, grouped-query attention with RoPE, and a SwiGLU FFN.
//! It reads in one sitting: embed, then for each layer attention and FFN with residuals,
//! then the output head. It runs a batch of consecutive tokens at once (a prompt chunk, or
//! one decode token), so prefill is a matrix-matrix product, and it is written once over
//! the fused ops of [`Backend`], so every backend runs this same code.

use anyhow::{bail, Result};

use super::{Config, Tensor};
use crate::backend::{AttnShape, Backend};
use crate::gguf::GgufFile;
use crate::kv::{KvLayout, KvSettings};

/// Tokens per forward pass during prefill on the CPU (and the default of
/// [`Backend::max_batch`]). Big enough that each weight row is reused from cache many
/// times, small enough that the activations stay in L2. Also the smallest batch every
/// backend takes, which bounds speculative drafts and sizes the window slack.
pub const MAX_BATCH: usize = 64;

struct Layer<W> {
    attn_norm: W,
    wq: W,
    wk: W,
    wv: W,
    wo: W,
    ffn_norm: W,
    w_gate: W,
    w_up: W,
    w_down: W,
}

pub struct Llama<'a, B: Backend<'a>> {
    pub config: Config,
    pub backend: B,
    embed: B::Weight,
    layers: Vec<Layer<B::Weight>>,
    output_norm: B::Weight,
    /// `None` when the embedding table doubles as the output head.
    output: Option<B::Weight>,
}

/// Everything one sequence needs while running: activations for a batch and its KV cache.
/// Allocated once; a forward pass allocates nothing.
pub struct State<'a, B: Backend<'a>> {
    x: B::Buf,
    xb: B::Buf,
    q: B::Buf,
    k: B::Buf,
    v: B::Buf,
    att: B::Buf,
    gate: B::Buf,
    up: B::Buf,
    last: B::Buf,
    logits_buf: B::Buf,
    logits: Vec<f32>,
    /// Logits of every row of a batch (`Logits::All`), for `rows_cap` rows; empty until
    /// `Llama::reserve_rows` asks for them, since most sequences never verify drafts.
    rows_buf: Option<B::Buf>,
    rows_logits: Vec<f32>,
    rows_cap: usize,
    pub kv: B::Kv,
    /// The layout of each layer's cache, as the backend's `kv` has it.
    layouts: Vec<KvLayout>,
    settings: KvSettings,
    /// The recorded decode step, once one has run.
    graph: Option<B::Graph>,
    /// Tokens per forward pass: the backend's batch, clamped to the window slack.
    max_batch: usize,
}

impl<'a, B: Backend<'a>> State<'a, B> {
    /// The logits of the last forward pass that asked for them.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Positions a sequence can hold before it needs a context shift: `--ctx`.
    pub fn capacity(&self) -> usize {
        self.settings.ctx
    }

    pub fn settings(&self) -> &KvSettings {
        &self.settings
    }

    /// The most tokens one forward pass over this state takes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    pub fn layouts(&self) -> &[KvLayout] {
        &self.layouts
    }

    /// The logits of the last `Logits::Last` pass, where the backend computed them.
    pub fn logits_buf(&self) -> &B::Buf {
        &self.logits_buf
    }

    /// The logits of every row of the last `Logits::All` pass, where the backend computed
    /// them (`None` until `Llama::reserve_rows`).
    pub fn rows_buf(&self) -> Option<&B::Buf> {
        self.rows_buf.as_ref()
    }

    /// The logits of row `i` of the last `Logits::All` forward pass.
    pub fn row_logits(&self, i: usize) -> &[f32] {
        let v = self.logits.len();
        &self.rows_logits[i * v..(i + 1) * v]
    }
}

/// Which logits a forward pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None: a prompt chunk before the last.
    None,
    /// After the last token only, read with `State::logits`.
    Last,
    /// After every token of the batch, read with `State::row_logits`; verifying a draft
    /// needs the target's prediction at each drafted position. Each row is computed bit
    /// for bit as a one-token pass would (`Backend::set_row_exact`). Needs
    /// `Llama::reserve_rows`.
    All,
}

impl<'a, B: Backend<'a>> Llama<'a, B> {
    pub fn load(f: &'a GgufFile, backend: B) -> Result<Llama<'a, B>> {
        Self::load_with_progress(f, backend, |_, _| {})
    }

    /// `load`, calling `progress(done, total)` after each tensor: uploading to a GPU takes
    /// long enough on big models to deserve a progress bar.
    pub fn load_with_progress(
        f: &'a GgufFile,
        backend: B,
        progress: impl Fn(usize, usize),
    ) -> Result<Llama<'a, B>> {
        let c = Config::from_gguf(f)?;
        let (dim, kv_dim, ffn) = (c.dim, c.kv_dim(), c.ffn_dim);
        let total = c.n_layers * 9 + 2 + usize::from(!c.tied_embeddings);
        let done = std::cell::Cell::new(0);
        let w = |name: &str, cols, rows| -> Result<B::Weight> {
            let weight = backend.weight(Tensor::load(f, name, cols, rows)?)?;
            done.set(done.get() + 1);
            progress(done.get(), total);
            Ok(weight)
        };
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let t = |name: &str, cols, rows| w(&format!("blk.{i}.{name}.weight"), cols, rows);
            layers.push(Layer {
                attn_norm: t("attn_norm", dim, 1)?,
                wq: t("attn_q", dim, dim)?,
                wk: t("attn_k", dim, kv_dim)?,
                wv: t("attn_v", dim, kv_dim)?,
                wo: t("attn_output", dim, dim)?,
                ffn_norm: t("ffn_norm", dim, 1)?,
                w_gate: t("ffn_gate", dim, ffn)?,
                w_up: t("ffn_up", dim, ffn)?,
                w_down: t("ffn_down", ffn, dim)?,
            });
        }
        let embed = w("token_embd.weight", dim, c.vocab_size)?;
        let output = if c.tied_embeddings {
            None
        } else {
            Some(w("output.weight", dim, c.vocab_size)?)
        };
        let output_norm = w("output_norm.weight", dim, 1)?;
        Ok(Llama {
            embed,
            layers,
            output_norm,
            output,
            config: c,
            backend,
        })
    }

    fn shape(&self) -> AttnShape {
        let c = &self.config;
        AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            rope_dims: c.rope_dims,
            rope_theta: c.rope_theta,
        }
    }

    /// Allocates the state for one sequence of up to `ctx` tokens, with the default cache.
    pub fn new_state(&self, ctx: usize) -> Result<State<'a, B>> {
        self.new_state_with(&KvSettings::new(ctx))
    }

    /// Allocates the state for one sequence with the cache `settings` describe.
    pub fn new_state_with(&self, settings: &KvSettings) -> Result<State<'a, B>> {
        let c = &self.config;
        let layouts = c.kv_layouts(settings);
        // A forward pass stores all its keys before any row attends, so on a sliding-window
        // layer a batch must fit the slots beyond the window (KvLayout::check_store).
        let b = layouts
            .iter()
            .filter_map(|l| l.window.map(|w| l.capacity - w))
            .fold(self.backend.max_batch(), usize::min)
            .max(1);
        let be = &self.backend;
        Ok(State {
            x: be.buffer(b * c.dim)?,
            xb: be.buffer(b * c.dim)?,
            q: be.buffer(b * c.dim)?,
            k: be.buffer(b * c.kv_dim())?,
            v: be.buffer(b * c.kv_dim())?,
            att: be.buffer(b * c.dim)?,
            gate: be.buffer(b * c.ffn_dim)?,
            up: be.buffer(b * c.ffn_dim)?,
            last: be.buffer(c.dim)?,
            logits_buf: be.buffer(c.vocab_size)?,
            logits: vec![0.0; c.vocab_size],
            kv: be.kv_cache(&layouts, c.kv_dim())?,
            layouts,
            settings: *settings,
            rows_buf: None,
            rows_logits: Vec::new(),
            rows_cap: 0,
            graph: None,
            max_batch: b,
        })
    }

    /// Makes room for `Logits::All` over batches of up to `rows` tokens (once; later calls
    /// with fewer rows keep the buffers).
    pub fn reserve_rows(&self, s: &mut State<'a, B>, rows: usize) -> Result<()> {
        if rows > s.max_batch {
            bail!(
                "a forward pass takes at most {} tokens, not {rows}",
                s.max_batch
            );
        }
        if rows > s.rows_cap {
            let v = self.config.vocab_size;
            s.rows_buf = Some(self.backend.buffer(rows * v)?);
            s.rows_logits = vec![0.0; rows * v];
            s.rows_cap = rows;
        }
        Ok(())
    }

    /// Runs `tokens` (at most `State::max_batch`) at positions `pos0..`, appending their keys and
    /// values to the cache, and computes the logits `which` asks for.
    pub fn forward(
        &self,
        s: &mut State<'a, B>,
        tokens: &[u32],
        pos0: usize,
        which: Logits,
    ) -> Result<()> {
        self.enqueue(s, tokens, true, pos0, which)?;
        self.read_logits(s, tokens.len(), which)
    }

    /// `forward`, leaving the logits where the backend computed them (`State::logits_buf`,
    /// `State::rows_buf`): nothing waits for the device. With `tokens` `None`, the `n`
    /// tokens are those a [`crate::backend::DeviceSpec`] staged on the device.
    pub fn forward_on_device(
        &self,
        s: &mut State<'a, B>,
        tokens: Option<&[u32]>,
        n: usize,
        pos0: usize,
        which: Logits,
    ) -> Result<()> {
        match tokens {
            Some(t) => self.enqueue(s, t, true, pos0, which),
            None => {
                if n > MAX_BATCH {
                    bail!("a forward pass takes 1 to {MAX_BATCH} tokens, not {n}");
                }
                // The ops take the ids from the device; the host only needs how many.
                self.enqueue(s, &[0; MAX_BATCH][..n], false, pos0, which)
            }
        }
    }

    fn read_logits(&self, s: &mut State<'a, B>, n: usize, which: Logits) -> Result<()> {
        let be = &self.backend;
        match which {
            Logits::None => {}
            Logits::Last => be.read(&s.logits_buf, &mut s.logits)?,
            Logits::All => {
                let v = self.config.vocab_size;
                if let Some(buf) = &s.rows_buf {
                    be.read(buf, &mut s.rows_logits[..n * v])?;
                }
            }
        }
        Ok(())
    }

    /// The ops of a forward pass, queued on the backend; `upload` sends the tokens and the
    /// position first (else they were staged on the device).
    fn enqueue(
        &self,
        s: &mut State<'a, B>,
        tokens: &[u32],
        upload: bool,
        pos0: usize,
        which: Logits,
    ) -> Result<()> {
        let be = &self.backend;
        let n = tokens.len();
        if n == 0 || n > s.max_batch {
            bail!("a forward pass takes 1 to {} tokens, not {n}", s.max_batch);
        }
        if pos0 + n > s.capacity() {
            bail!(
                "position {} is past the context size {}",
                pos0 + n - 1,
                s.capacity()
            );
        }
        if which == Logits::All && n > s.rows_cap {
            bail!(
                "logits of {n} rows asked for, but only {} were reserved",
                s.rows_cap
            );
        }
        if upload {
            be.begin_forward(tokens, pos0)?;
        }
        if n == 1 && which == Logits::Last {
            // A decode step: the same ops every time, so a backend may record and replay it.
            let mut graph = s.graph.take();
            let r = be.run_step(&mut graph, &mut || self.run_ops(s, tokens, pos0, which));
            s.graph = graph;
            r?;
        } else if which == Logits::All {
            // Each row as a decode step would compute it, so a verified draft agrees
            // bit for bit with plain decoding.
            be.set_row_exact(true);
            let r = self.run_ops(s, tokens, pos0, which);
            be.set_row_exact(false);
            r?;
        } else {
            self.run_ops(s, tokens, pos0, which)?;
        }
        Ok(())
    }

    /// Forgets positions `start..start + d` of the `len` in the cache and renumbers the
    /// later ones down by `d`, so that `len - d` positions remain.
    pub fn shift(&self, s: &mut State<'a, B>, start: usize, d: usize, len: usize) -> Result<()> {
        self.backend
            .kv_shift(&mut s.kv, start, d, len, self.shape())?;
        for l in &mut s.layouts {
            *l = l.shifted(start, d, len);
        }
        Ok(())
    }

    /// The ops of a forward pass, from the embedding to the logits on the backend.
    fn run_ops(
        &self,
        s: &mut State<'a, B>,
        tokens: &[u32],
        pos0: usize,
        which: Logits,
    ) -> Result<()> {
        let (c, be, shape) = (&self.config, &self.backend, self.shape());
        let n = tokens.len();
        be.embed(&self.embed, tokens, &mut s.x)?;
        // Each RMSNorm after the first runs as part of the product before it
        // (`matmul_add_norm`), and so does the output norm where every row it normalises
        // is wanted: a backend may then fold it into that product's epilogue.
        let fold_last =
            !self.layers.is_empty() && (which == Logits::All || (which == Logits::Last && n == 1));
        if let Some(first) = self.layers.first() {
            be.rmsnorm(&s.x, &first.attn_norm, c.rms_eps, n, &mut s.xb)?;
        }
        for (l, w) in self.layers.iter().enumerate() {
            // Attention block.
            be.matmul(
                &s.xb,
                n,
                &[&w.wq, &w.wk, &w.wv],
                &mut [&mut s.q, &mut s.k, &mut s.v],
            )?;
            be.rope_attention(
                &mut s.q, &mut s.k, &s.v, &mut s.kv, l, pos0, n, shape, &mut s.att,
            )?;
            be.matmul_add_norm(
                &s.att,
                n,
                &w.wo,
                &mut s.x,
                &w.ffn_norm,
                c.rms_eps,
                &mut s.xb,
            )?;

            // Feed-forward block.
            be.matmul_swiglu(
                &s.xb,
                n,
                &w.w_gate,
                &w.w_up,
                c.ffn_dim,
                &mut s.gate,
                &mut s.up,
            )?;
            let next_norm = match self.layers.get(l + 1) {
                Some(next) => Some(&next.attn_norm),
                None => fold_last.then_some(&self.output_norm),
            };
            match next_norm {
                Some(norm) => {
                    be.matmul_add_norm(&s.gate, n, &w.w_down, &mut s.x, norm, c.rms_eps, &mut s.xb)?
                }
                None => be.matmul_add(&s.gate, n, &w.w_down, &mut s.x)?,
            }
        }
        let output = self.output.as_ref().unwrap_or(&self.embed);
        match which {
            Logits::None => {}
            Logits::Last => {
                if !fold_last {
                    be.copy_row(&s.x, n - 1, c.dim, &mut s.last)?;
                    be.rmsnorm(&s.last, &self.output_norm, c.rms_eps, 1, &mut s.xb)?;
                }
                be.matmul(&s.xb, 1, &[output], &mut [&mut s.logits_buf])?;
            }
            Logits::All => {
                let out = s.rows_buf.as_mut().expect("rows reserved, checked above");
                if !fold_last {
                    be.rmsnorm(&s.x, &self.output_norm, c.rms_eps, n, &mut s.xb)?;
                }
                be.matmul(&s.xb, n, &[output], &mut [out])?;
            }
        }
        Ok(())
    }
}
