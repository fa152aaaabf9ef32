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
    /// Values under one pair of scales: the K depth of each tile product.
    pub block: usize,
    /// The weight blocks carry an offset (`x = d * q + m`), which meets the activations'
    /// block sums.
    pub min: bool,
}

/// The weight types with an AMX path, and how their blocks are cut.
pub fn format(t: GgmlType) -> Option<Format> {
    use GgmlType as T;
    let (block, min) = match t {
        T::Q4_0 | T::Q8_0 => (32, false),
        T::Q4_1 | T::Q4_K => (32, true),
        // Q6_K's scales change every 16 values.
        T::Q6_K => (16, false),
        _ => return None,
    };
    Some(Format { block, min })
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
    blocks: usize,
    /// `[tile][block][block / 4][TILE tokens][4]` int8.
    q: Vec<Line>,
    /// `[tile][block][TILE]`: each block's scale, 0 for the padding tokens.
    scale: Vec<f32>,
    /// `[tile][block][TILE]`: scale × the sum of the block's values (types with `min`).
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
        let nb = cols / bl;
        let tiles = rows.div_ceil(TILE);
        let lines_per_block = bl / 4;
        grow(&mut self.q, tiles * nb * lines_per_block, ZERO_LINE);
        grow(&mut self.scale, tiles * nb * TILE, 0.0);
        grow(&mut self.sum, tiles * nb * TILE, 0.0);
        let q = bytes_mut(&mut self.q[..tiles * nb * lines_per_block]);
        if !rows.is_multiple_of(TILE) {
            // Padding tokens: zero values and scales, so their (unused) sums stay finite.
            let last = (tiles - 1) * nb;
            q[last * bl * TILE..].fill(0);
            self.scale[last * TILE..tiles * nb * TILE].fill(0.0);
            self.sum[last * TILE..tiles * nb * TILE].fill(0.0);
        }
        for n in 0..rows {
            let row = &bytes[n * row_bytes..(n + 1) * row_bytes];
            let (tile, lane) = (n / TILE, n % TILE);
            for b in 0..nb {
                let (d, s, vals) = act_block(weight, row, b, bl);
                let at = (tile * nb + b) * TILE + lane;
                self.scale[at] = d;
                self.sum[at] = s;
                let base = (tile * nb + b) * bl * TILE + lane * 4;
                for (k4, v) in vals.chunks_exact(4).enumerate() {
                    q[base + k4 * TILE * 4..base + k4 * TILE * 4 + 4].copy_from_slice(v);
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

/// Block `b` of an activation row: (scale, scale × sum of values, the int8 values).
#[inline]
fn act_block(weight: GgmlType, row: &[u8], b: usize, bl: usize) -> (f32, f32, &[u8]) {
    use GgmlType as T;
    match weight {
        // Q8_0: f16 scale, 32 values.
        T::Q4_0 | T::Q8_0 => {
            let blk = &row[b * 34..b * 34 + 34];
            (h([blk[0], blk[1]]), 0.0, &blk[2..34])
        }
        // Q8_1: f16 scale, f16 scale × sum, 32 values.
        T::Q4_1 => {
            let blk = &row[b * 36..b * 36 + 36];
            (h([blk[0], blk[1]]), h([blk[2], blk[3]]), &blk[4..36])
        }
        // Q8_K: f32 scale, 256 values, 16 i16 sums of 16.
        _ => {
            let per = 256 / bl;
            let (sb, j) = (b / per, b % per);
            let blk = &row[sb * 292..sb * 292 + 292];
            let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
            let bsum = |i: usize| i16::from_le_bytes([blk[260 + 2 * i], blk[261 + 2 * i]]) as i32;
            let s = if bl == 32 {
                d * (bsum(2 * j) + bsum(2 * j + 1)) as f32
            } else {
                d * bsum(j) as f32
            };
            (d, s, &blk[4 + j * bl..4 + (j + 1) * bl])
        }
    }
}

/// Up to 16 weight rows decoded for the tiles: one thread's scratch.
#[derive(Default)]
pub struct Panel {
    format: Option<Format>,
    blocks: usize,
    rows: usize,
    /// `[block][TILE rows][block]` int8.
    q: Vec<Line>,
    /// `[block][TILE]`: each block's scale, 0 for padding rows.
    scale: Vec<f32>,
    /// `[block][TILE]`: each block's offset (types with `min`).
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
        let nb = cols / f.block;
        grow(&mut self.q, nb * f.block * TILE / 64, ZERO_LINE);
        grow(&mut self.scale, nb * TILE, 0.0);
        grow(&mut self.min, nb * TILE, 0.0);
        let (q, scale, min) = (
            bytes_mut(&mut self.q[..nb * f.block * TILE / 64]),
            &mut self.scale[..nb * TILE],
            &mut self.min[..nb * TILE],
        );
        let mut rows: [&[u8]; TILE] = [&[]; TILE];
        for (m, r) in rows.iter_mut().zip(r0..r1) {
            *m = &data[r * row_bytes..(r + 1) * row_bytes];
        }
        decode::panel(t, &rows[..r1 - r0], q, scale, min);
        for m in r1 - r0..TILE {
            for b in 0..nb {
                scale[b * TILE + m] = 0.0;
                min[b * TILE + m] = 0.0;
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
            let per = nb * TILE;
            let a = tile * nb;
            let out = kernel::Out {
                prefetch: (prefetch.as_ptr(), prefetch.len()),
                ptr: out,
                stride,
                rows: self.rows,
                tokens: (acts.rows - tile * TILE).min(TILE),
                accumulate,
            };
            // `tiles` proves this thread configured the tile registers for this format
            // (and that the CPU has them); the slices hold `nb` whole blocks.
            kernel::product(
                f,
                nb,
                [self.scale[..per].as_ptr(), self.min[..per].as_ptr()],
                bytes(&self.q[..per * f.block / 64]).as_ptr(),
                bytes(&acts.q[a * f.block / 4..(a + nb) * f.block / 4]).as_ptr(),
                [
                    acts.scale[a * TILE..a * TILE + per].as_ptr(),
                    acts.sum[a * TILE..a * TILE + per].as_ptr(),
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
        let (wq, aq) = (bytes(&self.q), bytes(&acts.q));
        *out = [[0.0; TILE]; TILE];
        for b in 0..nb {
            let a = tile * nb + b;
            for (m, o) in out.iter_mut().enumerate() {
                for (n, o) in o.iter_mut().enumerate() {
                    let mut sum = 0i32;
                    for k in 0..bl {
                        let w = wq[(b * TILE + m) * bl + k] as i8 as i32;
                        let x = aq[a * bl * TILE + (k / 4) * TILE * 4 + n * 4 + k % 4] as i8 as i32;
                        sum += w * x;
                    }
                    *o += sum as f32 * acts.scale[a * TILE + n] * self.scale[b * TILE + m];
                    if f.min {
                        *o += self.min[b * TILE + m] * acts.sum[a * TILE + n];
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
