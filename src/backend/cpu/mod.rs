//! The CPU backend: the reference implementation of each op of a forward pass, with the
//! heavy ones (matrix products, attention) split over a persistent thread pool.

mod attn;
mod ops;
pub mod pool;

use std::cell::{Cell, RefCell};
use std::sync::OnceLock;

use anyhow::{ensure, Result};

pub use ops::{rmsnorm_row, rope, rope_by, rope_inv_freq, softmax, swiglu};

use super::{AttnShape, Backend};
use crate::kv::{KvCache, KvLayout};
use crate::model::Tensor;
use crate::quant::amx::{self, Panel, Tiles, TILE};
use crate::quant::{DotInput, Packed4, Precision};
use pool::{split, SharedMut, ThreadPool};

/// Weight rows each thread takes at a time, so kernels see whole groups.
const ROW_STEP: usize = 4;
/// Weight rows kept hot in L1 while every activation row passes over them.
const ROW_TILE: usize = 16;
/// How far ahead of the rows being computed the prefetch hints run.
const PREFETCH_ROWS: usize = 32;
/// Tokens per forward pass where products run on AMX tiles: each decoded weight panel
/// then serves eight token tiles rather than four, halving the decoding per token, while
/// the interleaved int8 activations (128 × 5632 bytes for a 1B model's widest product)
/// still stay in L2.
const AMX_BATCH: usize = 2 * crate::model::MAX_BATCH;

/// A weight on the CPU: the mapped tensor, never copied, and a packed copy of it where
/// this CPU decodes that layout faster (`quant::Packed4`); products then read only the
/// copy. The copy is made at the first product, so tables that are only looked up (token
/// embeddings) never get one.
pub struct CpuWeight<'a> {
    pub tensor: Tensor<'a>,
    packed: OnceLock<Option<Packed4>>,
}

impl<'a> std::ops::Deref for CpuWeight<'a> {
    type Target = Tensor<'a>;
    fn deref(&self) -> &Tensor<'a> {
        &self.tensor
    }
}

pub struct Cpu {
    pool: ThreadPool,
    precision: Precision,
    /// Software prefetch ahead of the weight rows. It helps where the kernels outrun the
    /// hardware prefetcher (AVX-512 on the Sapphire Rapids VM: SmolLM2 decode 126 -> 165
    /// tok/s) and hurts where they do not (AVX2 on Zen 3: tinyllama Q4_K_M 18.1 -> 15.8),
    /// so it follows the kernel level.
    prefetch: bool,
    /// Activations converted for the last matmul's weight type.
    dot: RefCell<DotInput>,
    /// A row of a packed table in the file's layout, for `embed`.
    scratch: RefCell<Vec<u8>>,
    /// Attention's buffers, one per thread.
    attn: RefCell<Vec<attn::Scratch>>,
    /// `Backend::set_row_exact`: no 4x4 tiles, whose sums round unlike a one-row dot's.
    row_exact: Cell<bool>,
    /// One decoded weight panel per thread, for the AMX path.
    panels: RefCell<Vec<Panel>>,
}

/// Weight rows `r0..r1` of a row-exact product: groups of four weight rows against up to
/// four activation rows per kernel call, grouped as a one-row step groups them (`dot4`
/// from `r0`, single dots past the last group of four), so each output keeps its bits.
fn exact_rows(
    out: &SharedMut<f32>,
    w: &Tensor,
    x: &DotInput,
    r0: usize,
    r1: usize,
    accumulate: bool,
) {
    let (n_rows, n_b) = (w.rows, x.rows());
    let mut r = r0;
    while r + 4 <= r1 {
        let rows = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
        for b in (0..n_b).step_by(4) {
            let m = (n_b - b).min(4);
            let mut v = [[0f32; 4]; 4];
            x.dot4_rows(w.ty, rows, b, &mut v[..m]);
            for (j, v) in v[..m].iter().enumerate() {
                // SAFETY: rows r0..r1 of every output row belong to the calling thread.
                let dst = unsafe { out.slice((b + j) * n_rows + r, 4) };
                if accumulate {
                    dst.iter_mut().zip(v).for_each(|(d, v)| *d += v);
                } else {
                    dst.copy_from_slice(v);
                }
            }
        }
        r += 4;
    }
    for r in r..r1 {
        for b in 0..n_b {
            let v = x.dot(w.ty, w.row(r), b);
            // SAFETY: as above.
            let d = unsafe { &mut out.slice(b * n_rows + r, 1)[0] };
            *d = if accumulate { *d + v } else { v };
        }
    }
}

impl Cpu {
    pub fn new(n_threads: usize, precision: Precision) -> Cpu {
        Cpu {
            pool: ThreadPool::new(n_threads),
            precision,
            prefetch: {
                use crate::quant::simd::{selected_level, Level};
                matches!(
                    selected_level(),
                    Level::Avx512 | Level::Avx512Vnni | Level::Amx
                )
            },
            dot: RefCell::new(DotInput::new(precision)),
            scratch: RefCell::new(Vec::new()),
            attn: RefCell::new(Vec::new()),
            row_exact: Cell::new(false),
            panels: RefCell::new(Vec::new()),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// `out[b][r] = w[r] · x[b]` (or `+=` with `accumulate`) for every weight row `r` and
    /// prepared activation row `b`; `out` holds `x.rows()` rows of `w.rows` values. Threads
    /// split the weight rows; each walks its rows in tiles that stay in L1 while every
    /// activation row passes over them, prefetching the next tile from memory meanwhile.
    fn matmul_prepared(&self, out: &mut [f32], w: &CpuWeight, x: &DotInput, accumulate: bool) {
        let packed = w
            .packed
            .get_or_init(|| Packed4::new(w.ty, w.data, w.rows, self.precision));
        if let Some(p) = packed {
            return self.matmul_packed(out, w, p, x, accumulate);
        }
        let w = &w.tensor;
        if let Some(acts) = x.amx(w.ty).filter(|_| !self.row_exact.get()) {
            return self.matmul_amx(out, w, acts, accumulate);
        }
        let (n_rows, n_b) = (w.rows, x.rows());
        let out = SharedMut::new(&mut out[..n_rows * n_b]);
        let t = self.pool.n_threads();
        let rb = w.row_bytes();
        let tile = x.has_tile(w.ty) && !self.row_exact.get();
        // Row-exact batches (verification) through a kernel that decodes each weight block
        // once for four activation rows yet rounds each row's sums as a decode step does.
        let rows_n = self.row_exact.get() && n_b >= 2 && x.has_rows_n(w.ty);
        // One activation row (decode) reuses nothing from L1: its tiles shrink to one row
        // group, which spreads the prefetch hints between the dots instead of issuing a
        // tile's worth at once, and the hints aim at L2, whose queue holds more misses in
        // flight than L1's few line-fill buffers, where hints into L1 stall. (Measured on
        // the 2-core VM, tg: SmolLM2 126 -> 165 tok/s, tinyllama Q4_0 21.5 -> 24.5.)
        // Row-exact batches stream too: `exact_rows` meets each weight row group with every
        // activation row at once, and then never again.
        let decode = n_b == 1 || rows_n;
        let hints = self.prefetch;
        let tile_rows = if decode { ROW_STEP } else { ROW_TILE };
        self.pool.run(|i| {
            let mine = split(n_rows, i, t, ROW_STEP);
            let mut r0 = mine.start;
            while r0 < mine.end {
                let r1 = (r0 + tile_rows).min(mine.end);
                if hints {
                    let ahead = (r1 + PREFETCH_ROWS).min(mine.end);
                    let from = (r0 + PREFETCH_ROWS).min(ahead);
                    prefetch(&w.data[from * rb..ahead * rb], decode);
                }
                if rows_n {
                    exact_rows(&out, w, x, r0, r1, accumulate);
                    r0 = r1;
                    continue;
                }
                // Four activation rows at a time through the tile kernel, which decodes
                // each weight block once for all four; the rest one row at a time.
                let tiled = if tile { n_b / 4 * 4 } else { 0 };
                for b in (0..tiled).step_by(4) {
                    let mut r = r0;
                    while r + 4 <= r1 {
                        let rows = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
                        let v = x.dot4x4(w.ty, rows, b);
                        for (j, bj) in (b..b + 4).enumerate() {
                            // SAFETY: rows r0..r1 of every output row belong to this
                            // thread alone.
                            let dst = unsafe { out.slice(bj * n_rows + r, 4) };
                            for (d, row) in dst.iter_mut().zip(&v) {
                                *d = if accumulate { *d + row[j] } else { row[j] };
                            }
                        }
                        r += 4;
                    }
                    for r in r..r1 {
                        for j in 0..4 {
                            let v = x.dot(w.ty, w.row(r), b + j);
                            // SAFETY: as above.
                            let d = unsafe { &mut out.slice((b + j) * n_rows + r, 1)[0] };
                            *d = if accumulate { *d + v } else { v };
                        }
                    }
                }
                for b in tiled..n_b {
                    // SAFETY: rows r0..r1 of every output row belong to this thread alone.
                    let o = unsafe { out.slice(b * n_rows + r0, r1 - r0) };
                    let mut r = r0;
                    // Four weight rows per call share each load of the activations.
                    while r + 4 <= r1 {
                        let rows = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
                        let v = x.dot4(w.ty, rows, b);
                        let dst = &mut o[r - r0..r - r0 + 4];
                        if accumulate {
                            dst.iter_mut().zip(v).for_each(|(d, v)| *d += v);
                        } else {
                            dst.copy_from_slice(&v);
                        }
                        r += 4;
                    }
                    for (r, d) in (r..r1).zip(&mut o[r - r0..]) {
                        let v = x.dot(w.ty, w.row(r), b);
                        *d = if accumulate { *d + v } else { v };
                    }
                }
                r0 = r1;
            }
        });
    }
}

impl Cpu {
    /// `matmul_prepared` over a packed weight: each thread takes whole groups of four rows,
    /// four activation rows at a time through the packed tile where the batch allows it
    /// (not in row-exact batches, whose rows must round as a decode step's), else one.
    fn matmul_packed(
        &self,
        out: &mut [f32],
        w: &Tensor,
        p: &Packed4,
        x: &DotInput,
        accumulate: bool,
    ) {
        let (n_rows, n_b) = (w.rows, x.rows());
        let out = SharedMut::new(&mut out[..n_rows * n_b]);
        let t = self.pool.n_threads();
        let tiled = if x.has_packed_tile(w.ty) && !self.row_exact.get() {
            n_b / 4 * 4
        } else {
            0
        };
        let store = |b: usize, r: usize, v: [f32; 4]| {
            // SAFETY: rows r..r + 4 of every output row belong to the calling thread.
            let dst = unsafe { out.slice(b * n_rows + r, 4) };
            if accumulate {
                dst.iter_mut().zip(v).for_each(|(d, v)| *d += v);
            } else {
                dst.copy_from_slice(&v);
            }
        };
        self.pool.run(|i| {
            let mine = split(n_rows, i, t, 4);
            // Tiles of rows that stay in L1 while every activation row passes over them.
            for r0 in mine.clone().step_by(ROW_TILE) {
                let r1 = (r0 + ROW_TILE).min(mine.end);
                for b in (0..tiled).step_by(4) {
                    for r in (r0..r1).step_by(4) {
                        let v = x.dot4x4_packed(w.ty, p, r / 4, b);
                        for j in 0..4 {
                            store(b + j, r, v.map(|row| row[j]));
                        }
                    }
                }
                for b in tiled..n_b {
                    for r in (r0..r1).step_by(4) {
                        store(b, r, x.dot4_packed(w.ty, p, r / 4, b));
                    }
                }
            }
        });
    }

    /// `matmul_prepared` on AMX tiles: each thread decodes 16 weight rows at a time into
    /// its panel, then multiplies the panel with every 16-token tile of the batch.
    fn matmul_amx(&self, out: &mut [f32], w: &Tensor, acts: &amx::Acts, accumulate: bool) {
        let (n_rows, n_b) = (w.rows, acts.rows());
        let out = SharedMut::new(&mut out[..n_rows * n_b]);
        let t = self.pool.n_threads();
        let mut panels = self.panels.borrow_mut();
        if panels.len() < t {
            panels.resize_with(t, Panel::default);
        }
        let panels = SharedMut::new(&mut panels[..t]);
        let (rb, format) = (w.row_bytes(), acts.format().expect("packed"));
        self.pool.run(|i| {
            // SAFETY: one panel per thread.
            let panel = unsafe { &mut panels.slice(i, 1)[0] };
            let mine = split(n_rows, i, t, TILE);
            if mine.is_empty() {
                return;
            }
            let tiles = Tiles::configure(format);
            for r0 in mine.clone().step_by(TILE) {
                let r1 = (r0 + TILE).min(mine.end);
                panel.load(w.ty, w.data, rb, w.cols, r0, r1);
                // The next panel's rows stream in while this one is multiplied, a share
                // per token tile.
                let next = &w.data[r1 * rb..(r1 + TILE).min(mine.end) * rb];
                let share = next.len().div_ceil(acts.tiles()).next_multiple_of(64);
                for tile in 0..acts.tiles() {
                    let pf =
                        &next[(tile * share).min(next.len())..((tile + 1) * share).min(next.len())];
                    // SAFETY: rows r0..r1 of every output row belong to this thread, and
                    // the tile's tokens are rows of `out`.
                    unsafe {
                        let dst = out.ptr(tile * TILE * n_rows + r0);
                        panel.multiply(&tiles, acts, tile, dst, n_rows, accumulate, pf);
                    }
                }
            }
        });
    }
}

/// Asks the CPU to start loading `bytes` into cache (into L2 only with `l2`). Streaming
/// weights from memory is the cost of decoding; a hint one tile ahead keeps more loads in
/// flight than the hardware prefetcher alone does.
#[inline]
fn prefetch(bytes: &[u8], l2: bool) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        // SAFETY: a prefetch is a hint; the address is inside a live slice.
        unsafe {
            if l2 {
                _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast())
            } else {
                _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast())
            }
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (bytes, l2);
}

impl<'a> Backend<'a> for Cpu {
    type Buf = Vec<f32>;
    type Weight = CpuWeight<'a>;
    type Kv = KvCache;
    type Graph = ();

    fn begin_forward(&self, _tokens: &[u32], _pos0: usize) -> Result<()> {
        Ok(())
    }

    fn max_batch(&self) -> usize {
        if amx::enabled() {
            AMX_BATCH
        } else {
            crate::model::MAX_BATCH
        }
    }

    fn run_step(
        &self,
        _graph: &mut Option<()>,
        step: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        step()
    }

    fn weight(&self, t: Tensor<'a>) -> Result<CpuWeight<'a>> {
        Ok(CpuWeight {
            tensor: t,
            packed: OnceLock::new(),
        })
    }

    fn buffer(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }

    fn kv_cache(&self, layouts: &[KvLayout], kv_dim: usize) -> Result<KvCache> {
        KvCache::new(layouts, kv_dim)
    }

    fn kv_shift(
        &self,
        kv: &mut KvCache,
        start: usize,
        d: usize,
        len: usize,
        s: AttnShape,
    ) -> Result<()> {
        let mut inv_freq = [0f32; 256];
        let inv_freq = &mut inv_freq[..s.rope_dims / 2];
        rope_inv_freq(s.rope_theta, s.rope_dims, inv_freq);
        let mut row = vec![0f32; kv.kv_dim()];
        for layer in 0..kv.n_layers() {
            let old = *kv.layout(layer);
            let new = old.shifted(start, d, len);
            for p in old.stored(len).filter(|&p| p >= start + d) {
                kv.update_key(layer, p, s.head_dim, &mut row, |k| {
                    rope_by(k, s.head_dim, inv_freq, -(d as f32))
                });
            }
            kv.set_layout(layer, new);
        }
        Ok(())
    }

    fn kv_save(&self, kv: &KvCache, len: usize, out: &mut Vec<u8>) -> Result<()> {
        for layer in 0..kv.n_layers() {
            for p in kv.layout(layer).stored(len) {
                let (k, v) = kv.rows(layer, p);
                out.extend_from_slice(k);
                out.extend_from_slice(v);
            }
        }
        Ok(())
    }

    fn kv_load(&self, kv: &mut KvCache, len: usize, data: &[u8]) -> Result<()> {
        let rb = kv.layout(0).ty.row_bytes(kv.kv_dim());
        let need: usize = (0..kv.n_layers())
            .map(|l| kv.layout(l).stored(len).len() * 2 * rb)
            .sum();
        ensure!(data.len() == need, "the saved cache has the wrong size");
        let mut rows = data.chunks_exact(rb);
        for layer in 0..kv.n_layers() {
            for p in kv.layout(layer).stored(len) {
                let (k, v) = (rows.next().unwrap(), rows.next().unwrap());
                kv.set_raw(layer, p, k, v);
            }
        }
        Ok(())
    }

    fn embed(&self, table: &CpuWeight<'a>, tokens: &[u32], x: &mut Vec<f32>) -> Result<()> {
        let dim = table.cols;
        // A table that is also the output matrix (tied embeddings) may be packed, its
        // mapped pages handed back: its rows then come from the copy, so lookups do not
        // fault the file's pages in again one by one.
        let packed = table.packed.get().and_then(|p| p.as_ref());
        let mut scratch = self.scratch.borrow_mut();
        for (&tok, row) in tokens.iter().zip(x.chunks_exact_mut(dim)) {
            ensure!(
                (tok as usize) < table.rows,
                "token id {tok} is outside the vocabulary of {}",
                table.rows
            );
            match packed {
                Some(p) => {
                    scratch.resize(p.row_bytes(), 0);
                    p.unpack_row(tok as usize, &mut scratch);
                    crate::quant::dequantize_row(table.ty, &scratch, row)?;
                }
                None => table.dequantize_row(tok as usize, row),
            }
        }
        Ok(())
    }

    fn rmsnorm(
        &self,
        x: &Vec<f32>,
        w: &CpuWeight<'a>,
        eps: f32,
        rows: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let n = w.cols;
        for (o, xr) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)).take(rows) {
            rmsnorm_row(o, xr, w, eps);
        }
        Ok(())
    }

    fn matmul(
        &self,
        x: &Vec<f32>,
        rows: usize,
        ws: &[&CpuWeight<'a>],
        outs: &mut [&mut Vec<f32>],
    ) -> Result<()> {
        let mut dot = self.dot.borrow_mut();
        let mut prepared = None;
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            // Weights sharing an input and a type reuse one conversion of it.
            if prepared != Some(w.ty) {
                dot.prepare(w.ty, &x[..rows * w.cols], w.cols)?;
                prepared = Some(w.ty);
            }
            self.matmul_prepared(out, w, &dot, false);
        }
        Ok(())
    }

    fn matmul_add(
        &self,
        y: &Vec<f32>,
        rows: usize,
        w: &CpuWeight<'a>,
        x: &mut Vec<f32>,
    ) -> Result<()> {
        let mut dot = self.dot.borrow_mut();
        dot.prepare(w.ty, &y[..rows * w.cols], w.cols)?;
        self.matmul_prepared(x, w, &dot, true);
        Ok(())
    }

    fn rope_store(
        &self,
        q: &mut Vec<f32>,
        k: &mut Vec<f32>,
        v: &Vec<f32>,
        kv: &mut KvCache,
        layer: usize,
        pos0: usize,
        rows: usize,
        s: AttnShape,
    ) -> Result<()> {
        kv.layout(layer).check_store(pos0, rows)?;
        let mut inv_freq = [0f32; 256];
        let inv_freq = &mut inv_freq[..s.rope_dims / 2];
        rope_inv_freq(s.rope_theta, s.rope_dims, inv_freq);
        let (qd, kd) = (s.q_dim(), s.kv_dim());
        let mut angles = [(0f32, 0f32); 256];
        let angles = &mut angles[..inv_freq.len()];
        for b in 0..rows {
            let pos = pos0 + b;
            ops::rope_angles(inv_freq, pos as f32, angles);
            ops::rope_with(&mut q[b * qd..(b + 1) * qd], s.head_dim, angles);
            let kb = &mut k[b * kd..(b + 1) * kd];
            ops::rope_with(kb, s.head_dim, angles);
            kv.store(layer, pos, kb, &v[b * kd..(b + 1) * kd], s.head_dim);
        }
        Ok(())
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        kv: &KvCache,
        layer: usize,
        pos0: usize,
        rows: usize,
        s: AttnShape,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let mut scratch = self.attn.borrow_mut();
        attn::attention(&self.pool, &mut scratch, q, kv, layer, pos0, rows, s, out);
        Ok(())
    }

    fn swiglu(&self, gate: &mut Vec<f32>, up: &Vec<f32>, n: usize) -> Result<()> {
        swiglu(&mut gate[..n], &up[..n]);
        Ok(())
    }

    fn copy_row(&self, src: &Vec<f32>, row: usize, width: usize, dst: &mut Vec<f32>) -> Result<()> {
        dst[..width].copy_from_slice(&src[row * width..(row + 1) * width]);
        Ok(())
    }

    fn read(&self, src: &Vec<f32>, out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(&src[..out.len()]);
        Ok(())
    }

    fn set_row_exact(&self, on: bool) {
        self.row_exact.set(on);
    }
}

/// Physical cores where the OS tells them apart from SMT siblings, else logical CPUs.
pub fn default_threads() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cores = std::collections::HashSet::new();
    for cpu in 0..logical {
        let p = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
        match std::fs::read_to_string(p) {
            Ok(s) => {
                cores.insert(s.trim().to_string());
            }
            Err(_) => return logical,
        }
    }
    cores.len().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{scalar_kernels, GgmlType};

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// Products with packed weights agree with the same weights unpacked, and a row-exact
    /// batch gives each row the bits of a one-row step.
    #[test]
    fn packed_weights_match_unpacked() {
        let (rows, cols) = (24, 256);
        let cpu = Cpu::new(2, Precision::Fast);
        let mut compared = 0;
        for t in [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q4_1,
            GgmlType::Q4_K,
        ] {
            let mut data = vec![0u8; t.bytes_for((rows * cols) as u64).unwrap() as usize];
            (scalar_kernels(t).unwrap().from_float)(&values(rows * cols, 3), &mut data);
            let tensor = Tensor {
                ty: t,
                rows,
                cols,
                data: &data,
            };
            let packed = cpu.weight(tensor).unwrap();
            let plain = CpuWeight {
                tensor,
                packed: OnceLock::from(None),
            };
            let mut out = vec![0f32; rows];
            cpu.matmul(&values(cols, 1), 1, &[&packed], &mut [&mut out])
                .unwrap();
            if packed.packed.get().unwrap().is_none() {
                // No packed kernel for this type on this CPU: nothing to compare.
                continue;
            }
            // A tied table's lookups read the packed copy: the same values.
            let tokens = [0u32, 5, 23, 17];
            let mut got = vec![0f32; tokens.len() * cols];
            let mut want = got.clone();
            cpu.embed(&packed, &tokens, &mut got).unwrap();
            cpu.embed(&plain, &tokens, &mut want).unwrap();
            assert_eq!(got, want, "{t} embedding rows from the packed copy");
            for n_b in [1, 3, 4, 6] {
                let x = values(n_b * cols, 7 + n_b as u32);
                let run = |w: &CpuWeight| {
                    let mut out = vec![0f32; n_b * rows];
                    cpu.matmul(&x, n_b, &[w], &mut [&mut out]).unwrap();
                    out
                };
                let (a, b) = (run(&packed), run(&plain));
                for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                        "{t} n_b {n_b} #{i}: {a} vs {b}"
                    );
                }
                cpu.set_row_exact(true);
                let exact = run(&packed);
                cpu.set_row_exact(false);
                for (bi, row) in exact.chunks_exact(rows).enumerate() {
                    let one = {
                        let mut out = vec![0f32; rows];
                        let xb = x[bi * cols..(bi + 1) * cols].to_vec();
                        cpu.matmul(&xb, 1, &[&packed], &mut [&mut out]).unwrap();
                        out
                    };
                    assert_eq!(row, &one[..], "{t} row-exact batch row {bi}");
                }
                compared += 1;
            }
        }
        // AVX2 CPUs pack Q4_0 unless a level without packed kernels is forced.
        #[cfg(target_arch = "x86_64")]
        if crate::quant::simd::selected_level() == crate::quant::simd::Level::Avx2 {
            assert!(compared > 0, "AVX2 selected, yet no weight was packed");
        }
    }

    /// Products at every prefill batch size (four-row tiles, then single activation rows),
    /// with weight row counts that leave rows past the last group of four, against the
    /// scalar dot of each weight row with each quantized activation row.
    #[test]
    fn matmul_matches_scalar_dots_at_every_batch_size() {
        let cpu = Cpu::new(2, Precision::Fast);
        for t in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let k = scalar_kernels(t).unwrap();
            let ak = scalar_kernels(k.vec_dot_type).unwrap();
            for (rows, cols) in [(30, 576), (37, 1536), (64, 576), (13, 64)] {
                let mut data = vec![0u8; t.bytes_for((rows * cols) as u64).unwrap() as usize];
                (k.from_float)(&values(rows * cols, 11), &mut data);
                let tensor = Tensor {
                    ty: t,
                    rows,
                    cols,
                    data: &data,
                };
                let w = cpu.weight(tensor).unwrap();
                let (rb, ab) = (data.len() / rows, ak_bytes(k.vec_dot_type, cols));
                let mut wf = vec![0f32; cols];
                let mut af = vec![0f32; cols];
                for n_b in 1..=64 {
                    let x = values(n_b * cols, 100 + n_b as u32);
                    let mut out = vec![0f32; n_b * rows];
                    cpu.matmul(&x, n_b, &[&w], &mut [&mut out]).unwrap();
                    for b in 0..n_b {
                        let mut q = vec![0u8; ab];
                        (ak.from_float)(&x[b * cols..(b + 1) * cols], &mut q);
                        (ak.to_float)(&q, &mut af);
                        for r in 0..rows {
                            let wr = &data[r * rb..(r + 1) * rb];
                            let want = (k.vec_dot.unwrap())(wr, &q);
                            (k.to_float)(wr, &mut wf);
                            // A few ulps of the terms' magnitude: summation order only.
                            let mag: f32 = wf.iter().zip(&af).map(|(w, a)| (w * a).abs()).sum();
                            let got = out[b * rows + r];
                            assert!(
                                (got - want).abs() <= 1e-5 * mag + 1e-30,
                                "{t} {rows}x{cols} n_b {n_b}: out[{b}][{r}] = {got}, scalar {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    fn ak_bytes(t: GgmlType, cols: usize) -> usize {
        t.bytes_for(cols as u64).unwrap() as usize
    }
}
