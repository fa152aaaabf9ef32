//! Compute backends. A forward pass is written once (`model::llama`) over the small set of
//! fused ops in [`Backend`]; each backend implements them over its own buffers. The CPU
//! backend is the reference every other backend is checked against, op by op.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use anyhow::Result;

use crate::kv::KvLayout;
use crate::model::Tensor;
use crate::sample::SamplerParams;

/// The shape of attention, shared by every op that touches heads.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Dimensions of each head that RoPE rotates, from the front.
    pub rope_dims: usize,
    pub rope_theta: f32,
}

impl AttnShape {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// The ops of a forward pass. Activations are row-major batches of `rows` tokens.
pub trait Backend<'a> {
    /// A buffer of f32 activations.
    type Buf;
    /// A weight, in its GGUF blocks, where this backend computes.
    type Weight;
    /// Keys and values of every layer.
    type Kv;
    /// A recorded decode step that can be replayed (a CUDA graph); `()` where none is kept.
    type Graph;

    /// Makes a weight available: borrowed on the CPU, uploaded once on a GPU.
    fn weight(&self, t: Tensor<'a>) -> Result<Self::Weight>;
    /// A zeroed buffer of `n` values.
    fn buffer(&self, n: usize) -> Result<Self::Buf>;
    /// Keys and values of every layer, each laid out as its [`KvLayout`] says.
    fn kv_cache(&self, layouts: &[KvLayout], kv_dim: usize) -> Result<Self::Kv>;
    /// A context shift: forgets positions `start..start + d` of the `len` stored, renumbers
    /// the later ones down by `d` (re-rotating their keys), and moves every layer to
    /// [`KvLayout::shifted`].
    fn kv_shift(
        &self,
        kv: &mut Self::Kv,
        start: usize,
        d: usize,
        len: usize,
        shape: AttnShape,
    ) -> Result<()>;
    /// Appends the stored rows of positions `0..len` (those each layer still holds, in
    /// layer and position order, key row then value row) to `out`, in the cache's type.
    fn kv_save(&self, kv: &Self::Kv, len: usize, out: &mut Vec<u8>) -> Result<()>;
    /// Stores rows written by `kv_save` for positions `0..len` in a cache of the same
    /// layouts.
    fn kv_load(&self, kv: &mut Self::Kv, len: usize, data: &[u8]) -> Result<()>;

    /// Called at the start of every forward pass, before any op, with its tokens and first
    /// position (a GPU uploads them here, so recorded steps can replay at a new position).
    fn begin_forward(&self, tokens: &[u32], pos0: usize) -> Result<()>;
    /// Runs `step`, the ops of one decode step, or replays what an earlier call recorded in
    /// `graph` for the same buffers.
    fn run_step(
        &self,
        graph: &mut Option<Self::Graph>,
        step: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()>;

    /// `x[b] = table[tokens[b]]` (the same tokens as given to `begin_forward`).
    fn embed(&self, table: &Self::Weight, tokens: &[u32], x: &mut Self::Buf) -> Result<()>;
    /// `out[b] = x[b] / rms(x[b]) * w` for rows `0..rows`.
    fn rmsnorm(
        &self,
        x: &Self::Buf,
        w: &Self::Weight,
        eps: f32,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// `outs[i][b] = ws[i] · x[b]` for several weights that share one input (q/k/v,
    /// gate/up), so the input is converted once.
    fn matmul(
        &self,
        x: &Self::Buf,
        rows: usize,
        ws: &[&Self::Weight],
        outs: &mut [&mut Self::Buf],
    ) -> Result<()>;
    /// `x[b] += w · y[b]`: a projection and its residual connection.
    fn matmul_add(
        &self,
        y: &Self::Buf,
        rows: usize,
        w: &Self::Weight,
        x: &mut Self::Buf,
    ) -> Result<()>;
    /// `x[b] += w · y[b]`, then `out[b] = rmsnorm(x[b]) * norm`: a projection, its
    /// residual connection, and the RMSNorm that opens the next block, as one op so that a
    /// backend may fold the norm into the product (CUDA does, for the rows its
    /// matrix-vector kernel takes).
    #[allow(clippy::too_many_arguments)]
    fn matmul_add_norm(
        &self,
        y: &Self::Buf,
        rows: usize,
        w: &Self::Weight,
        x: &mut Self::Buf,
        norm: &Self::Weight,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.matmul_add(y, rows, w, x)?;
        self.rmsnorm(x, norm, eps, rows, out)
    }
    /// Rotates `q` and `k` for positions `pos0..pos0 + rows` and stores `k`, `v` in the
    /// cache of `layer`.
    #[allow(clippy::too_many_arguments)]
    fn rope_store(
        &self,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        v: &Self::Buf,
        kv: &mut Self::Kv,
        layer: usize,
        pos0: usize,
        rows: usize,
        shape: AttnShape,
    ) -> Result<()>;
    /// Causal attention of query rows at `pos0..` over the cached positions that the
    /// layer's layout keeps live for each ([`KvLayout::live`]).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &Self::Buf,
        kv: &Self::Kv,
        layer: usize,
        pos0: usize,
        rows: usize,
        shape: AttnShape,
        out: &mut Self::Buf,
    ) -> Result<()>;
    /// [`Backend::rope_store`], then [`Backend::attention`]: one op, so that a backend may
    /// fuse the two (`q` and `k` may then be left unrotated; nothing reads them after).
    #[allow(clippy::too_many_arguments)]
    fn rope_attention(
        &self,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        v: &Self::Buf,
        kv: &mut Self::Kv,
        layer: usize,
        pos0: usize,
        rows: usize,
        shape: AttnShape,
        out: &mut Self::Buf,
    ) -> Result<()> {
        self.rope_store(q, k, v, kv, layer, pos0, rows, shape)?;
        self.attention(q, kv, layer, pos0, rows, shape, out)
    }
    /// `gate = silu(gate) * up`, over `n` values.
    fn swiglu(&self, gate: &mut Self::Buf, up: &Self::Buf, n: usize) -> Result<()>;
    /// `gate[b] = silu(w_gate · x[b]) * (w_up · x[b])` for rows of `width` results, with
    /// `up` as scratch (what it holds afterwards is unspecified): the feed-forward block's
    /// first half as one op, so that a backend may apply SwiGLU in the products' epilogue
    /// (CUDA does, for the rows its matrix-vector kernel takes).
    #[allow(clippy::too_many_arguments)]
    fn matmul_swiglu(
        &self,
        x: &Self::Buf,
        rows: usize,
        w_gate: &Self::Weight,
        w_up: &Self::Weight,
        width: usize,
        gate: &mut Self::Buf,
        up: &mut Self::Buf,
    ) -> Result<()> {
        self.matmul(x, rows, &[w_gate, w_up], &mut [&mut *gate, &mut *up])?;
        self.swiglu(gate, up, rows * width)
    }
    /// Copies row `row` of `src` (rows of `width`) to row 0 of `dst`.
    fn copy_row(
        &self,
        src: &Self::Buf,
        row: usize,
        width: usize,
        dst: &mut Self::Buf,
    ) -> Result<()>;
    /// Copies the first `out.len()` values of `src` to the host.
    fn read(&self, src: &Self::Buf, out: &mut [f32]) -> Result<()>;

    /// While on, a multi-row op must compute each row bit for bit as a one-row call would
    /// (no multi-row kernels that round differently). Verifying a speculative draft turns it
    /// on, so that speculation never changes which token greedy decoding picks. A backend
    /// whose multi-row kernels already round like its one-row ones can ignore it.
    fn set_row_exact(&self, _on: bool) {}

    /// The most tokens one forward pass may take. Buffers are sized for it, so a backend
    /// whose batched products get faster with the batch (a GPU's tensor cores reuse each
    /// decoded weight tile over more tokens) can run a whole prompt in a few passes, while
    /// the CPU keeps batches whose activations stay in its caches.
    fn max_batch(&self) -> usize {
        crate::model::MAX_BATCH
    }

    /// Speculative decoding kept on the device, where the backend has it (see
    /// [`DeviceSpec`]); `None` makes the speculator pick and judge tokens on the host.
    fn device_spec(&self) -> Option<&dyn DeviceSpec<Self::Buf>> {
        None
    }
}

/// Speculation without a trip through the host per draft token: the draft's picks
/// stay on the device, where they feed its next decode step and then the verification,
/// and the acceptance rule runs there too, so that one small copy to the host ends each
/// verification (`judge`). The forward passes in between take their tokens from what these
/// calls staged (`Session::step_staged`, `Session::verify_staged`) and leave their logits
/// on the device. One speculation at a time per backend: the staging area is shared.
pub trait DeviceSpec<Buf> {
    /// Draft token `i` (below `MAX_BATCH`): the argmax of `logits` (`vocab` values, the
    /// CPU sampler's greedy pick) becomes proposal `i`, and the token of the next forward
    /// pass, at position `next_pos`. Its probability is kept for `judge`'s `p_min`.
    fn pick(&self, logits: &Buf, vocab: usize, i: usize, next_pos: usize) -> Result<()>;
    /// Sets the proposals from the host (a draft that did not come from `pick`), each as
    /// sure as can be.
    fn set_proposals(&self, ids: &[u32]) -> Result<()>;
    /// Stages the tokens of a verification: `first`, then proposals `0..n`, at positions
    /// `pos0..`.
    fn stage_verify(&self, pos0: usize, first: u32, n: usize) -> Result<()>;
    /// Judges proposals `0..n` against `n + 1` rows of the target's logits (from a
    /// verification staged by `stage_verify`) and waits for the verdict: the one
    /// synchronisation of a speculative step. The verdict goes to `out`, whose buffer is reused.
    fn judge(
        &self,
        rows: &Buf,
        vocab: usize,
        n: usize,
        cut: DraftCut,
        out: &mut Verdict,
    ) -> Result<()>;
    /// Waits for everything queued (for timing).
    fn sync(&self) -> Result<()>;

    /// Sampled speculation (temperature above 0) on the device: from here on the device
    /// samples the model as `target` does and a draft model as `draft` does (`None`: the
    /// proposals are one-hot, as a greedy or n-gram draft's), with its own random numbers
    /// seeded from theirs. False, changing nothing, when the device cannot sample as the
    /// host would with these settings; the host samples then.
    fn sample_setup(
        &self,
        target: &SamplerParams,
        draft: Option<&SamplerParams>,
        vocab: usize,
    ) -> Result<bool>;
    /// `pick` for a sampled draft: draft token `i` is drawn from the draft's distribution
    /// after `logits`, which is kept for `judge_sampled`; its top probability is the
    /// proposal's for `--draft-p-min`.
    fn pick_sampled(&self, logits: &Buf, vocab: usize, i: usize, next_pos: usize) -> Result<()>;
    /// `judge` by speculative sampling's rule: each proposal is kept with probability
    /// min(1, p/q), the first rejected one replaced by a draw from normalize(max(0, p - q)),
    /// and a draft kept whole followed by a draw from p, where p is the model's sampling
    /// distribution of each row and q the draft's.
    fn judge_sampled(
        &self,
        rows: &Buf,
        vocab: usize,
        n: usize,
        cut: DraftCut,
        out: &mut Verdict,
    ) -> Result<()>;

    /// Plain decoding (one forward pass per token) picking its tokens on the device: from
    /// here on `plain_pick` picks as a host `Sampler` of `params` whose random stream
    /// stands at `rng` (`Sampler::rng_state`) would, never picking a token of `mask`. False,
    /// changing nothing, when the device cannot follow these settings (a repeat penalty,
    /// or a top-k wider than the device keeps); the host samples then. One plain decoding
    /// at a time per backend: the mode and the random stream are shared.
    fn plain_setup(
        &self,
        params: &SamplerParams,
        rng: [u64; 4],
        mask: &[u32],
        vocab: usize,
    ) -> Result<bool>;
    /// The next token after `logits` (`vocab` values; the masked ones are overwritten with
    /// -inf), staged as the next decode step's token at `next_pos` (as `pick` stages it),
    /// and copied to the host: the one wait of a token.
    fn plain_pick(&self, logits: &Buf, vocab: usize, next_pos: usize) -> Result<u32> {
        self.plain_queue(logits, vocab, next_pos)?;
        self.plain_take()
    }
    /// `plain_pick` in two halves, so that the host can queue the next step between them:
    /// `plain_queue` queues the pick and its id's way to the host, `plain_take` waits for
    /// the oldest id queued and not yet taken. At most four may be outstanding.
    fn plain_queue(&self, logits: &Buf, vocab: usize, next_pos: usize) -> Result<()>;
    fn plain_take(&self) -> Result<u32>;
    /// Drops the ids queued and not taken: a generation stopped with a pick ahead.
    fn plain_forget(&self);
    /// Whether picks may run ahead of the host: a pick it never takes must change nothing
    /// it will see (greedy: no random stream moves on).
    fn plain_ahead(&self) -> bool;
}

/// Where `--draft-p-min` cuts a draft that was picked whole on the device: at the first
/// proposal `i >= min` whose probability is under `p_min`.
#[derive(Clone, Copy, Debug)]
pub struct DraftCut {
    pub min: usize,
    pub p_min: f32,
}

/// What a verification on the device decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Proposals before `DraftCut` cut the draft: those judged.
    pub valid: usize,
    /// Of those, how many the target accepted (a prefix).
    pub accepted: usize,
    /// The target's own token after the accepted ones.
    pub next: u32,
    /// Every proposal judged or not, as the device picked them.
    pub proposals: Vec<u32>,
}

/// A borrowed backend is a backend: a draft model and its target share one (one thread
/// pool on the CPU, one context and stream on a GPU) instead of competing for the device.
impl<'a, T: Backend<'a>> Backend<'a> for &T {
    type Buf = T::Buf;
    type Weight = T::Weight;
    type Kv = T::Kv;
    type Graph = T::Graph;

    fn weight(&self, t: Tensor<'a>) -> Result<Self::Weight> {
        (**self).weight(t)
    }
    fn buffer(&self, n: usize) -> Result<Self::Buf> {
        (**self).buffer(n)
    }
    fn kv_cache(&self, layouts: &[KvLayout], kv_dim: usize) -> Result<Self::Kv> {
        (**self).kv_cache(layouts, kv_dim)
    }
    fn kv_shift(
        &self,
        kv: &mut Self::Kv,
        start: usize,
        d: usize,
        len: usize,
        shape: AttnShape,
    ) -> Result<()> {
        (**self).kv_shift(kv, start, d, len, shape)
    }
    fn kv_save(&self, kv: &Self::Kv, len: usize, out: &mut Vec<u8>) -> Result<()> {
        (**self).kv_save(kv, len, out)
    }
    fn kv_load(&self, kv: &mut Self::Kv, len: usize, data: &[u8]) -> Result<()> {
        (**self).kv_load(kv, len, data)
    }
    fn begin_forward(&self, tokens: &[u32], pos0: usize) -> Result<()> {
        (**self).begin_forward(tokens, pos0)
    }
    fn run_step(
        &self,
        graph: &mut Option<Self::Graph>,
        step: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        (**self).run_step(graph, step)
    }
    fn embed(&self, table: &Self::Weight, tokens: &[u32], x: &mut Self::Buf) -> Result<()> {
        (**self).embed(table, tokens, x)
    }
    fn rmsnorm(
        &self,
        x: &Self::Buf,
        w: &Self::Weight,
        eps: f32,
        rows: usize,
        out: &mut Self::Buf,
    ) -> Result<()> {
        (**self).rmsnorm(x, w, eps, rows, out)
    }
    fn matmul(
        &self,
        x: &Self::Buf,
        rows: usize,
        ws: &[&Self::Weight],
        outs: &mut [&mut Self::Buf],
    ) -> Result<()> {
        (**self).matmul(x, rows, ws, outs)
    }
    fn matmul_add(
        &self,
        y: &Self::Buf,
        rows: usize,
        w: &Self::Weight,
        x: &mut Self::Buf,
    ) -> Result<()> {
        (**self).matmul_add(y, rows, w, x)
    }
    fn matmul_add_norm(
        &self,
        y: &Self::Buf,
        rows: usize,
        w: &Self::Weight,
        x: &mut Self::Buf,
        norm: &Self::Weight,
        eps: f32,
        out: &mut Self::Buf,
    ) -> Result<()> {
        (**self).matmul_add_norm(y, rows, w, x, norm, eps, out)
    }
    fn rope_store(
        &self,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        v: &Self::Buf,
        kv: &mut Self::Kv,
        layer: usize,
        pos0: usize,
        rows: usize,
        shape: AttnShape,
    ) -> Result<()> {
        (**self).rope_store(q, k, v, kv, layer, pos0, rows, shape)
    }
    fn attention(
        &self,
        q: &Self::Buf,
        kv: &Self::Kv,
        layer: usize,
        pos0: usize,
        rows: usize,
        shape: AttnShape,
        out: &mut Self::Buf,
    ) -> Result<()> {
        (**self).attention(q, kv, layer, pos0, rows, shape, out)
    }
    fn rope_attention(
        &self,
        q: &mut Self::Buf,
        k: &mut Self::Buf,
        v: &Self::Buf,
        kv: &mut Self::Kv,
        layer: usize,
        pos0: usize,
        rows: usize,
        shape: AttnShape,
        out: &mut Self::Buf,
    ) -> Result<()> {
        (**self).rope_attention(q, k, v, kv, layer, pos0, rows, shape, out)
    }
    fn swiglu(&self, gate: &mut Self::Buf, up: &Self::Buf, n: usize) -> Result<()> {
        (**self).swiglu(gate, up, n)
    }
    fn matmul_swiglu(
        &self,
        x: &Self::Buf,
        rows: usize,
        w_gate: &Self::Weight,
        w_up: &Self::Weight,
        width: usize,
        gate: &mut Self::Buf,
        up: &mut Self::Buf,
    ) -> Result<()> {
        (**self).matmul_swiglu(x, rows, w_gate, w_up, width, gate, up)
    }
    fn copy_row(
        &self,
        src: &Self::Buf,
        row: usize,
        width: usize,
        dst: &mut Self::Buf,
    ) -> Result<()> {
        (**self).copy_row(src, row, width, dst)
    }
    fn read(&self, src: &Self::Buf, out: &mut [f32]) -> Result<()> {
        (**self).read(src, out)
    }
    fn set_row_exact(&self, on: bool) {
        (**self).set_row_exact(on)
    }
    fn device_spec(&self) -> Option<&dyn DeviceSpec<Self::Buf>> {
        (**self).device_spec()
    }
    fn max_batch(&self) -> usize {
        (**self).max_batch()
    }
}
