//! Prefill's matrix products on AMX-INT8 tiles (Intel Sapphire Rapids and later).
//!
//! A tile product `tdpbssd` multiplies 16 rows of int8 by 16 columns and adds into a
//! 16×16 int32 tile. ggml's formats scale every block of 32 (or 16) values on both sides,
//! so one tile product covers exactly one block: its int32 sums are the exact integer
//! block dots, which AVX-512 then converts and scales into f32 accumulators as the
//! one-row dot kernels do. Only the float accumulation order differs from `vec_dot`.
//!
//! Weights are decoded 16 rows at a time into a small per-thread panel of int8 values and
//! f32 scales, then reused for every 16-token tile of the batch: the mmapped file is never
//! copied and no repacked weights are kept. Activations (already rounded to the weight
//! type's 8-bit dot type) are interleaved once per product into the layout `tdpbssd` reads
//! its second operand in: four consecutive values of one token per 32-bit lane.

mod decode;
#[cfg(target_arch = "x86_64")]
mod kernel;
#[cfg(test)]
mod tests;

use super::legacy::h;
use super::GgmlType;

/// Tokens a tile takes, and weight rows a panel holds.
pub const TILE: usize = 16;

/// Fewer activation rows than this go through the AVX-512 kernels instead: below it,
/// decoding a weight panel costs more than the tile products save.
pub const MIN_ROWS: usize = 8;

/// How a weight type meets the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// The K depth of each tile product: values under one pair of scales, or for `folded`
    /// types a quarter of a super-block.
    pub block: usize,
    /// The weight blocks carry an offset (`x = d * q + m`), which meets the activations'
    /// block sums.
    pub min: bool,
    /// K-quants: the sub-blocks' integer scales are multiplied into the weights at decode
    /// time and each product `q * sc` is split into two int8 digits, `hi * 64 + lo`. Both
    /// sides then keep one f32 scale per super-block, so the tiles sum the whole
    /// super-block exactly in int32 (two products per 64 values) and the float epilogue
    /// runs once per 256 values instead of once per 16 or 32.
    pub folded: bool,
}

/// Values of a K-quant super-block.
const SUPER: usize = 256;
/// Values under one offset of a folded type (Q4_K's sub-blocks).
const MIN_SPAN: usize = 32;

impl Format {
    /// Values under one scale of each side.
    fn scale_span(self) -> usize {
        if self.folded {
            SUPER
        } else {
            self.block
        }
    }

    /// Values under one offset (`min`) of the weights, and one block sum of the
    /// activations.
    fn sum_span(self) -> usize {
        if self.folded {
            MIN_SPAN
        } else {
            self.block
        }
    }

    /// Where a panel keeps the offset of sum span `s` of row `m`: `[s][TILE]`, or for
    /// `folded`, `[super-block][TILE][8]` so that one row's eight are stored at once.
    fn min_at(self, s: usize, m: usize) -> usize {
        if self.folded {
            let per = SUPER / MIN_SPAN;
            ((s / per) * TILE + m) * per + s % per
        } else {
            s * TILE + m
        }
    }

    /// Bytes of a weight panel per `block` values: one int8 tile, or two for `folded`.
    fn panel_bytes(self) -> usize {
        TILE * self.block * if self.folded { 2 } else { 1 }
    }
}

/// The weight types with an AMX path, and how their blocks are cut.
pub fn format(t: GgmlType) -> Option<Format> {
    use GgmlType as T;
    let (block, min, folded) = match t {
        T::Q4_0 | T::Q8_0 => (32, false, false),
        T::Q4_1 => (32, true, false),
        T::Q4_K => (64, true, true),
        T::Q6_K => (64, false, true),
        _ => return None,
    };
    Some(Format { block, min, folded })
}

/// True if this CPU has AMX-INT8 and the OS let this process use the tile registers.
/// Independent of `WICK_SIMD`: see `enabled`.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        kernel::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// True if matrix products use the tiles: the selected SIMD level is `amx`.
pub fn enabled() -> bool {
    super::simd::selected_level() == super::simd::Level::Amx
}

/// A cache line, so tile rows start on 64-byte boundaries.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

const ZERO_LINE: Line = Line([0; 64]);

fn bytes_mut(lines: &mut [Line]) -> &mut [u8] {
    // SAFETY: `Line` is 64 plain bytes with no padding.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 64) }
}

fn bytes(lines: &[Line]) -> &[u8] {
    // SAFETY: as in `bytes_mut`.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast(), lines.len() * 64) }
}

/// Grows `v` to `n` elements, never shrinking, so a buffer reaches its size once.
fn grow<T: Copy>(v: &mut Vec<T>, n: usize, fill: T) {
    if v.len() < n {
        v.resize(n, fill);
    }
}

/// Activation rows in the tiles' layout, for one weight type.
#[derive(Default)]
pub struct Acts {
    format: Option<Format>,
    rows: usize,
    /// `block`s per row.
    blocks: usize,
    /// `[tile][block][block / 4][TILE tokens][4]` int8.
    q: Vec<Line>,
    /// `[tile][scale span][TILE]`: each span's scale, 0 for the padding tokens.
    scale: Vec<f32>,
    /// `[tile][sum span][TILE]`: scale × the sum of the span's values (types with `min`).
    sum: Vec<f32>,
}

impl Acts {
    /// Interleaves `rows` activation rows of `weight`'s dot type (`row_bytes` each, from
    /// `bytes`) for products with weights of type `weight`, `cols` values per row.
    ///
    /// # Panics
    /// If `weight` has no `format`.
    pub fn pack(
        &mut self,
        weight: GgmlType,
        bytes: &[u8],
        row_bytes: usize,
        rows: usize,
        cols: usize,
    ) {
        let f = format(weight).expect("a type with an AMX format");
        let bl = f.block;
        let (nb, ns, nm) = (cols / bl, cols / f.scale_span(), cols / f.sum_span());
        let tiles = rows.div_ceil(TILE);
        let lines_per_block = bl / 4;
        grow(&mut self.q, tiles * nb * lines_per_block, ZERO_LINE);
        grow(&mut self.scale, tiles * ns * TILE, 0.0);
        grow(&mut self.sum, tiles * nm * TILE, 0.0);
        let q = bytes_mut(&mut self.q[..tiles * nb * lines_per_block]);
        if !rows.is_multiple_of(TILE) {
            // Padding tokens: zero values and scales, so their (unused) sums stay finite.
            let last = tiles - 1;
            q[last * nb * bl * TILE..].fill(0);
            self.scale[last * ns * TILE..tiles * ns * TILE].fill(0.0);
            self.sum[last * nm * TILE..tiles * nm * TILE].fill(0.0);
        }
        for n in 0..rows {
            let row = &bytes[n * row_bytes..(n + 1) * row_bytes];
            let (tile, lane) = (n / TILE, n % TILE);
            for b in 0..nb {
                let vals = act_values(weight, row, b, bl);
                let base = (tile * nb + b) * bl * TILE + lane * 4;
                for (k4, v) in vals.chunks_exact(4).enumerate() {
                    q[base + k4 * TILE * 4..base + k4 * TILE * 4 + 4].copy_from_slice(v);
                }
            }
            let span = f.scale_span();
            for s in 0..ns {
                self.scale[(tile * ns + s) * TILE + lane] = act_scale_sum(weight, row, s, span).0;
            }
            if f.min {
                let span = f.sum_span();
                for s in 0..nm {
                    self.sum[(tile * nm + s) * TILE + lane] = act_scale_sum(weight, row, s, span).1;
                }
            }
        }
        self.format = Some(f);
        self.rows = rows;
        self.blocks = nb;
    }

    pub fn format(&self) -> Option<Format> {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn tiles(&self) -> usize {
        self.rows.div_ceil(TILE)
    }
}

/// The int8 values of block `b` (`bl` long) of an activation row.
#[inline]
fn act_values(weight: GgmlType, row: &[u8], b: usize, bl: usize) -> &[u8] {
    use GgmlType as T;
    match weight {
        // Q8_0: f16 scale, 32 values.
        T::Q4_0 | T::Q8_0 => &row[b * 34 + 2..b * 34 + 34],
        // Q8_1: f16 scale, f16 scale × sum, 32 values.
        T::Q4_1 => &row[b * 36 + 4..b * 36 + 36],
        // Q8_K: f32 scale, 256 values, 16 i16 sums of 16.
        _ => {
            let (sb, j) = (b * bl / SUPER, b * bl % SUPER);
            &row[sb * 292 + 4 + j..sb * 292 + 4 + j + bl]
        }
    }
}

/// Span `s` (`span` values) of an activation row: (its scale, scale × sum of its values).
#[inline]
fn act_scale_sum(weight: GgmlType, row: &[u8], s: usize, span: usize) -> (f32, f32) {
    use GgmlType as T;
    match weight {
        T::Q4_0 | T::Q8_0 => {
            let blk = &row[s * 34..s * 34 + 34];
            (h([blk[0], blk[1]]), 0.0)
        }
        T::Q4_1 => {
            let blk = &row[s * 36..s * 36 + 36];
            (h([blk[0], blk[1]]), h([blk[2], blk[3]]))
        }
        _ => {
            let (sb, j) = (s * span / SUPER, s * span % SUPER);
            let blk = &row[sb * 292..sb * 292 + 292];
            let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
            let bsum = |i: usize| i16::from_le_bytes([blk[260 + 2 * i], blk[261 + 2 * i]]) as i32;
            let sum: i32 = (j / 16..(j + span) / 16).map(bsum).sum();
            (d, d * sum as f32)
        }
    }
}

/// Up to 16 weight rows decoded for the tiles: one thread's scratch.
#[derive(Default)]
pub struct Panel {
    format: Option<Format>,
    /// `block`s per row.
    blocks: usize,
    rows: usize,
    /// `[block][TILE rows][block]` int8; `folded`: `[block][hi, lo][TILE rows][block]`.
    q: Vec<Line>,
    /// `[scale span][TILE]`: each span's scale, 0 for padding rows.
    scale: Vec<f32>,
    /// Each sum span's offset (types with `min`), at `Format::min_at`.
    min: Vec<f32>,
}

impl Panel {
    /// Decodes rows `r0..r1` (at most `TILE`) of a `t` tensor whose rows are `row_bytes`
    /// long and hold `cols` values.
    pub fn load(
        &mut self,
        t: GgmlType,
        data: &[u8],
        row_bytes: usize,
        cols: usize,
        r0: usize,
        r1: usize,
    ) {
        let f = format(t).expect("a type with an AMX format");
        assert!(r1 > r0 && r1 - r0 <= TILE);
        let (nb, ns, nm) = (cols / f.block, cols / f.scale_span(), cols / f.sum_span());
        let lines = nb * f.panel_bytes() / 64;
        grow(&mut self.q, lines, ZERO_LINE);
        grow(&mut self.scale, ns * TILE, 0.0);
        grow(&mut self.min, nm * TILE, 0.0);
        let (q, scale, min) = (
            bytes_mut(&mut self.q[..lines]),
            &mut self.scale[..ns * TILE],
            &mut self.min[..nm * TILE],
        );
        let mut rows: [&[u8]; TILE] = [&[]; TILE];
        for (m, r) in rows.iter_mut().zip(r0..r1) {
            *m = &data[r * row_bytes..(r + 1) * row_bytes];
        }
        decode::panel(t, &rows[..r1 - r0], q, scale, min);
        // Padding rows keep stale (finite) values: zero scales make them vanish.
        for m in r1 - r0..TILE {
            for s in 0..ns {
                scale[s * TILE + m] = 0.0;
            }
            for s in 0..nm {
                min[f.min_at(s, m)] = 0.0;
            }
        }
        self.format = Some(f);
        self.blocks = nb;
        self.rows = r1 - r0;
    }

    /// Panel row `m` dotted with token `n` of tile `tile` of `acts`, on the tiles
    /// configured by `tiles`, into (or, with `accumulate`, added to) `out[n * stride + m]`
    /// for the panel's rows and the tile's tokens. Meanwhile it asks for `prefetch` to be
    /// loaded into L2: the next panel's weights, so that its decoding does not wait on
    /// memory.
    ///
    /// # Safety
    /// `out` must be valid for those elements, and no other thread may touch them.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn multiply(
        &self,
        tiles: &Tiles,
        acts: &Acts,
        tile: usize,
        out: *mut f32,
        stride: usize,
        accumulate: bool,
        prefetch: &[u8],
    ) {
        let f = self.format.expect("a loaded panel");
        assert!(acts.format == Some(f) && tiles.format == f && acts.blocks == self.blocks);
        assert!(tile < acts.tiles() && stride >= self.rows);
        #[cfg(target_arch = "x86_64")]
        {
            let nb = self.blocks;
            let cols = nb * f.block;
            let (ns, nm) = (cols / f.scale_span(), cols / f.sum_span());
            let out = kernel::Out {
                prefetch: (prefetch.as_ptr(), prefetch.len()),
                ptr: out,
                stride,
                rows: self.rows,
                tokens: (acts.rows - tile * TILE).min(TILE),
                accumulate,
            };
            let aq = bytes(&acts.q[tile * nb * f.block / 4..(tile + 1) * nb * f.block / 4]);
            // `tiles` proves this thread configured the tile registers for this format
            // (and that the CPU has them); the slices hold `nb` whole blocks.
            kernel::product(
                f,
                nb,
                [
                    self.scale[..ns * TILE].as_ptr(),
                    self.min[..nm * TILE].as_ptr(),
                ],
                bytes(&self.q[..nb * f.panel_bytes() / 64]).as_ptr(),
                aq.as_ptr(),
                [
                    acts.scale[tile * ns * TILE..(tile + 1) * ns * TILE].as_ptr(),
                    acts.sum[tile * nm * TILE..(tile + 1) * nm * TILE].as_ptr(),
                ],
                out,
            )
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (tiles, out, accumulate, prefetch);
            unreachable!("no tiles on this architecture")
        }
    }

    /// What `multiply` computes, in portable code over the same layouts: the tests' check
    /// of the packing on any CPU.
    pub fn multiply_portable(&self, acts: &Acts, tile: usize, out: &mut [[f32; TILE]; TILE]) {
        let f = self.format.expect("a loaded panel");
        assert!(acts.format == Some(f) && acts.blocks == self.blocks);
        let (bl, nb) = (f.block, self.blocks);
        let cols = nb * bl;
        let (ns, nm) = (cols / f.scale_span(), cols / f.sum_span());
        let (wq, aq) = (bytes(&self.q), bytes(&acts.q));
        let digits = if f.folded { 2 } else { 1 };
        let blocks_per_scale = f.scale_span() / bl;
        *out = [[0.0; TILE]; TILE];
        for (m, o) in out.iter_mut().enumerate() {
            for (n, o) in o.iter_mut().enumerate() {
                for s in 0..ns {
                    // The span's exact integer dot: `hi * 64 + lo` for folded weights.
                    let mut sum = 0i32;
                    for b in s * blocks_per_scale..(s + 1) * blocks_per_scale {
                        let a = tile * nb + b;
                        for k in 0..bl {
                            let x =
                                aq[a * bl * TILE + (k / 4) * TILE * 4 + n * 4 + k % 4] as i8 as i32;
                            let w = |digit: usize| {
                                wq[((b * digits + digit) * TILE + m) * bl + k] as i8 as i32
                            };
                            let w = if f.folded { w(0) * 64 + w(1) } else { w(0) };
                            sum += w * x;
                        }
                    }
                    let sc = acts.scale[(tile * ns + s) * TILE + n] * self.scale[s * TILE + m];
                    *o += sum as f32 * sc;
                }
                if f.min {
                    for s in 0..nm {
                        *o += self.min[f.min_at(s, m)] * acts.sum[(tile * nm + s) * TILE + n];
                    }
                }
            }
        }
    }
}

/// The tile registers, configured on this thread for one format; released on drop.
pub struct Tiles {
    format: Format,
    /// The configuration belongs to the thread that loaded it.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Tiles {
    /// # Panics
    /// If AMX is not `available`.
    pub fn configure(format: Format) -> Tiles {
        assert!(available(), "AMX is not available");
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` checked the CPU and obtained the OS's permission.
        unsafe {
            kernel::configure(format.block)
        };
        Tiles {
            format,
            _thread: std::marker::PhantomData,
        }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the tiles were configured by `configure` on this thread.
        unsafe {
            kernel::release()
        };
    }
}
