//! Weights repacked, at a matrix's first product, for CPUs where one sequential weight
//! stream of four rows decodes faster than four streams: each group of four rows becomes
//! one run of memory. The layouts put the four rows side by side in each vector's lanes
//! (`BlockQ4_0x4`, `BlockQ4_1x4`, `BlockQ8_0x4`, `BlockQ4Kx4`), so the kernels' sums come
//! out a lane pair per row, as in llama.cpp's repacked layouts. The file stays untouched; the copy takes about the tensor's size, and the mapped pages
//! it replaces are handed back to the kernel, so the resident total stays about the file's.

use super::kquants::{pack_scale_min_k4, scale_min_k4};
use super::{kernels, Block, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ8_0, GgmlType, Precision};

/// Block `i` of four Q4_0 rows as the packed Q4_0 kernels read it: the four scales, then
/// bytes 0..8 of each row's quants, then bytes 8..16. One 32-byte load then holds the
/// four rows side by side in 64-bit lanes, elements 0..8 in its low nibbles and 16..24 in
/// its high ones (8..16 and 24..32 in the second load), so a vector's i32 sums belong to
/// the rows lane pair by lane pair.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_0x4 {
    pub d: [[u8; 2]; 4],
    pub qs: [u8; 64],
}

// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bit pattern.
unsafe impl Block for BlockQ4_0x4 {}

const _: () = assert!(std::mem::size_of::<BlockQ4_0x4>() == 4 * std::mem::size_of::<BlockQ4_0>());

/// Block `i` of four Q4_1 rows: `BlockQ4_0x4` with the four minimums after the scales.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ4_1x4 {
    pub d: [[u8; 2]; 4],
    pub m: [[u8; 2]; 4],
    pub qs: [u8; 64],
}

// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bit pattern.
unsafe impl Block for BlockQ4_1x4 {}

const _: () = assert!(std::mem::size_of::<BlockQ4_1x4>() == 4 * std::mem::size_of::<BlockQ4_1>());

/// Block `i` of four Q8_0 rows as the packed Q8_0 kernels read it: the four scales, then
/// four 32-byte runs, run `k` holding bytes `8k..8k + 8` of each row (see `BlockQ4_0x4`).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ8_0x4 {
    pub d: [[u8; 2]; 4],
    pub qs: [u8; 128],
}

// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bit pattern.
unsafe impl Block for BlockQ8_0x4 {}

const _: () = assert!(std::mem::size_of::<BlockQ8_0x4>() == 4 * std::mem::size_of::<BlockQ8_0>());

/// Super-block `i` of four Q4_K rows as the packed Q4_K kernels read it. The 6-bit scales
/// and minimums are unpacked to bytes (16 more bytes than four `BlockQ4K`s): scale of
/// sub-block `j` of row `r` at `sc[4 * j + r]`, its minimum at `mn[8 * r + j]`. The quants
/// follow in 32-byte runs, run `4 * c + p` holding bytes `32 * c + 8 * p..+ 8` of each row,
/// so one load carries eight elements of sub-blocks `2c` (low nibbles) and `2c + 1` (high)
/// for the four rows side by side.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct BlockQ4Kx4 {
    pub d: [[u8; 2]; 4],
    pub dmin: [[u8; 2]; 4],
    pub sc: [u8; 32],
    pub mn: [u8; 32],
    pub qs: [u8; 512],
}

// SAFETY: repr(C) over byte arrays: alignment 1, no padding, any bit pattern.
unsafe impl Block for BlockQ4Kx4 {}

const _: () = assert!(std::mem::size_of::<BlockQ4Kx4>() == 4 * 144 + 16);

/// One weight matrix in groups of four rows, laid out by `layout`.
pub struct Packed4 {
    t: GgmlType,
    bytes: Vec<u8>,
    /// Bytes of one group of four rows.
    group_bytes: usize,
    /// Bytes of one row in the file's layout.
    row_bytes: usize,
}

impl Packed4 {
    /// Packs `rows` rows of `t` in `data`, if this CPU has packed kernels for `t` and the
    /// rows split into whole groups of four; `None` otherwise, or with `WICK_PACK=0`.
    pub fn new(t: GgmlType, data: &[u8], rows: usize, precision: Precision) -> Option<Packed4> {
        let k = kernels(t)?;
        if precision != Precision::Fast
            || k.packed_4rows.is_none()
            || rows == 0
            || !rows.is_multiple_of(4)
            || std::env::var("WICK_PACK").is_ok_and(|v| v.trim() == "0")
        {
            return None;
        }
        let row_bytes = data.len() / rows;
        let bb = t.block_bytes();
        if row_bytes * rows != data.len() || !row_bytes.is_multiple_of(bb) {
            return None;
        }
        let bytes = layout(t, data, row_bytes)?;
        release(data);
        Some(Packed4 {
            t,
            group_bytes: bytes.len() / (rows / 4),
            bytes,
            row_bytes,
        })
    }

    /// Row `r` in the file's layout, rebuilt from the copy into `out` (`row_bytes` long):
    /// for the lookups of a table that is also a product's matrix (tied embeddings), whose
    /// mapped pages went back to the kernel.
    pub fn unpack_row(&self, r: usize, out: &mut [u8]) {
        let g = self.group(r / 4);
        let k = r % 4;
        let bb = self.t.block_bytes();
        match self.t {
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                // `nibbles_x4` backwards: the four scales (and minimums), then the runs.
                let head = if self.t == GgmlType::Q4_1 { 16 } else { 8 };
                let q = head / 4;
                for (o, b) in out.chunks_exact_mut(bb).zip(g.chunks_exact(head + 64)) {
                    for part in 0..head / 8 {
                        let at = 8 * part + 2 * k;
                        o[2 * part..2 * part + 2].copy_from_slice(&b[at..at + 2]);
                    }
                    o[q..q + 8].copy_from_slice(&b[head + 8 * k..head + 8 * k + 8]);
                    o[q + 8..q + 16].copy_from_slice(&b[head + 32 + 8 * k..head + 40 + 8 * k]);
                }
            }
            GgmlType::Q8_0 => {
                for (o, b) in out
                    .chunks_exact_mut(bb)
                    .zip(g.chunks_exact(std::mem::size_of::<BlockQ8_0x4>()))
                {
                    o[..2].copy_from_slice(&b[2 * k..2 * k + 2]);
                    for run in 0..4 {
                        let at = 8 + 32 * run + 8 * k;
                        o[2 + 8 * run..10 + 8 * run].copy_from_slice(&b[at..at + 8]);
                    }
                }
            }
            GgmlType::Q4_K => {
                let blocks: &[BlockQ4Kx4] = super::blocks(g);
                for (o, b) in out.chunks_exact_mut(bb).zip(blocks) {
                    let ls: [u8; 8] = std::array::from_fn(|j| b.sc[4 * j + k]);
                    let lm: [u8; 8] = std::array::from_fn(|j| b.mn[8 * k + j]);
                    o[..2].copy_from_slice(&b.d[k]);
                    o[2..4].copy_from_slice(&b.dmin[k]);
                    o[4..16].copy_from_slice(&pack_scale_min_k4(&ls, &lm));
                    for run in 0..16 {
                        let at = (4 * run + k) * 8;
                        o[16 + 8 * run..24 + 8 * run].copy_from_slice(&b.qs[at..at + 8]);
                    }
                }
            }
            // `layout` gave `new` a copy only for the types above.
            t => unreachable!("no packed layout for {t}"),
        }
        debug_assert_eq!(out.len(), self.row_bytes);
    }

    /// Bytes of one row in the file's layout.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// All groups, in row order.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The group holding rows `4g..4g + 4`.
    pub fn group(&self, g: usize) -> &[u8] {
        &self.bytes[g * self.group_bytes..(g + 1) * self.group_bytes]
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Asks the kernel to reclaim the pages that lie wholly inside `bytes`, which products no
/// longer read once packed, so the copy does not double the resident memory. Reclaim
/// never changes contents: pages of a mapped file come back from the file if anything
/// reads them again (the embedding lookup of a tied output matrix), and pages of heap
/// memory without swap simply stay.
pub fn release(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        let start = (bytes.as_ptr() as usize).next_multiple_of(page);
        let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
        if end > start {
            // SAFETY: the range lies inside a live allocation or mapping, and
            // MADV_PAGEOUT is a hint that keeps every byte's value. A failure (kernels
            // before 5.4) leaves the pages resident.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_PAGEOUT) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = bytes;
}

/// Rows of type `t` in groups of four, laid out as the packed kernels of `t` read them;
/// `None` for a type without a packed layout.
pub fn layout(t: GgmlType, data: &[u8], row_bytes: usize) -> Option<Vec<u8>> {
    Some(match t {
        GgmlType::Q4_0 => nibbles_x4::<BlockQ4_0>(data, row_bytes, |b| (&b.d, None, &b.qs)),
        GgmlType::Q4_1 => nibbles_x4::<BlockQ4_1>(data, row_bytes, |b| (&b.d, Some(&b.m), &b.qs)),
        GgmlType::Q4_K => q4_kx4(data, row_bytes),
        GgmlType::Q8_0 => q8_0x4(data, row_bytes),
        _ => return None,
    })
}

/// Q4_K rows in groups of four as `BlockQ4Kx4`s.
fn q4_kx4(data: &[u8], row_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 576 * 592);
    for group in data.chunks_exact(4 * row_bytes) {
        let rows: Vec<&[BlockQ4K]> = group.chunks_exact(row_bytes).map(super::blocks).collect();
        for i in 0..rows[0].len() {
            let mut b = BlockQ4Kx4 {
                d: [[0; 2]; 4],
                dmin: [[0; 2]; 4],
                sc: [0; 32],
                mn: [0; 32],
                qs: [0; 512],
            };
            for (r, row) in rows.iter().enumerate() {
                let w = &row[i];
                b.d[r] = w.d;
                b.dmin[r] = w.dmin;
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &w.scales);
                    b.sc[4 * j + r] = sc;
                    b.mn[8 * r + j] = m;
                }
                for run in 0..16 {
                    let at = (4 * run + r) * 8;
                    b.qs[at..at + 8].copy_from_slice(&w.qs[8 * run..8 * run + 8]);
                }
            }
            // SAFETY: BlockQ4Kx4 is plain bytes without padding (the Block contract).
            let bytes: &[u8; 592] = unsafe { &*(&b as *const BlockQ4Kx4).cast() };
            out.extend_from_slice(bytes);
        }
    }
    out
}

/// Q8_0 rows in groups of four as `BlockQ8_0x4`s.
fn q8_0x4(data: &[u8], row_bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for group in data.chunks_exact(4 * row_bytes) {
        let rows: Vec<&[BlockQ8_0]> = group.chunks_exact(row_bytes).map(super::blocks).collect();
        for i in 0..rows[0].len() {
            for r in &rows {
                out.extend_from_slice(&r[i].d);
            }
            for k in 0..4 {
                for r in &rows {
                    let q: &[u8; 32] = bytemuck_i8(&r[i].qs);
                    out.extend_from_slice(&q[8 * k..8 * k + 8]);
                }
            }
        }
    }
    out
}

fn bytemuck_i8(q: &[i8; 32]) -> &[u8; 32] {
    // SAFETY: i8 and u8 have the same size, alignment and (all) bit patterns.
    unsafe { &*(q as *const [i8; 32]).cast() }
}

/// Q4_0 or Q4_1 rows in groups of four as `BlockQ4_0x4`s or `BlockQ4_1x4`s: the four
/// scales, the four minimums if the type has them, then quant bytes 0..8 of each row and
/// bytes 8..16. `fields` gives a block's scale, minimum and quants.
fn nibbles_x4<B: Block>(
    data: &[u8],
    row_bytes: usize,
    fields: impl Fn(&B) -> (&[u8; 2], Option<&[u8; 2]>, &[u8; 16]),
) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    for group in data.chunks_exact(4 * row_bytes) {
        let rows: [&[B]; 4] =
            std::array::from_fn(|r| super::blocks(&group[r * row_bytes..(r + 1) * row_bytes]));
        for i in 0..rows[0].len() {
            let f = rows.map(|row| fields(&row[i]));
            f.iter().for_each(|f| out.extend_from_slice(f.0));
            f.iter()
                .flat_map(|f| f.1)
                .for_each(|m| out.extend_from_slice(m));
            for half in [0..8, 8..16] {
                f.iter()
                    .for_each(|f| out.extend_from_slice(&f.2[half.clone()]));
            }
        }
    }
    assert_eq!(out.len(), data.len(), "whole groups of four rows");
    out
}

#[cfg(test)]
mod tests {
    use super::Packed4;
    use crate::quant::{scalar_kernels, GgmlType, Precision};

    /// Each packed layout gives back every row as the file holds it.
    #[test]
    fn rows_unpack_to_the_file_layout() {
        for t in [
            GgmlType::Q4_0,
            GgmlType::Q8_0,
            GgmlType::Q4_1,
            GgmlType::Q4_K,
        ] {
            let (rows, cols) = (8, 512);
            let x: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut data = vec![0u8; t.bytes_for((rows * cols) as u64).unwrap() as usize];
            (scalar_kernels(t).unwrap().from_float)(&x, &mut data);
            let Some(p) = Packed4::new(t, &data, rows, Precision::Fast) else {
                continue; // no packed kernel for `t` on this CPU
            };
            let rb = data.len() / rows;
            let mut row = vec![0u8; rb];
            for r in 0..rows {
                p.unpack_row(r, &mut row);
                assert_eq!(row, data[r * rb..(r + 1) * rb], "{t} row {r}");
            }
        }
    }
}
