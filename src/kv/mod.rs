//! The key/value cache. [`layout`] says which slot holds each position (shared by every
//! backend); this module holds the CPU's storage: per layer, preallocated rows of keys and
//! of values in f32, f16, Q8_0 or fp8, read by attention where they lie.

pub mod f16row;
pub mod file;
pub mod fp8;
pub mod layout;
pub mod rotate;

use half::f16;

pub use layout::{KvLayout, KvSettings, KvType, WINDOW_SLACK};

use crate::quant::{as_blocks, BlockQ8_0, GgmlType, QK};

/// The widest head attention handles; rows of a head are decoded into stack buffers.
pub const MAX_HEAD_DIM: usize = 256;

struct LayerKv {
    layout: KvLayout,
    k: Vec<u8>,
    v: Vec<u8>,
}

pub struct KvCache {
    kv_dim: usize,
    row_bytes: usize,
    layers: Vec<LayerKv>,
    /// A row being rotated on its way into the cache.
    scratch: Vec<f32>,
}

impl KvCache {
    /// Fails when a row of `kv_dim` values cannot be stored as the layouts' type.
    pub fn new(layouts: &[KvLayout], kv_dim: usize) -> anyhow::Result<KvCache> {
        let ty = layouts.first().map_or(KvType::F32, |l| l.ty);
        anyhow::ensure!(
            layouts.iter().all(|l| l.ty == ty),
            "every layer's KV cache must have the same type"
        );
        check_kv_dim(ty, kv_dim)?;
        let row_bytes = ty.row_bytes(kv_dim);
        let layers = layouts
            .iter()
            .map(|&layout| LayerKv {
                layout,
                k: vec![0; layout.capacity * row_bytes],
                v: vec![0; layout.capacity * row_bytes],
            })
            .collect();
        Ok(KvCache {
            kv_dim,
            row_bytes,
            layers,
            scratch: vec![0.0; kv_dim],
        })
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn layout(&self, layer: usize) -> &KvLayout {
        &self.layers[layer].layout
    }

    pub fn set_layout(&mut self, layer: usize, l: KvLayout) {
        self.layers[layer].layout = l;
    }

    /// Bytes of memory the cache holds.
    pub fn size_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.k.len() + l.v.len()).sum()
    }

    fn range(&self, layer: usize, pos: usize) -> std::ops::Range<usize> {
        let i = self.layers[layer].layout.slot(pos) * self.row_bytes;
        i..i + self.row_bytes
    }

    /// Stores the key and value rows of `pos`, for heads of `head_dim` (a Q8_0 cache
    /// holds them Hadamard-rotated, see [`rotate`]).
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32], head_dim: usize) {
        let r = self.range(layer, pos);
        let l = &mut self.layers[layer];
        let ty = l.layout.ty;
        let n = rotate::chunk(ty, head_dim);
        for (x, dst) in [(k, &mut l.k), (v, &mut l.v)] {
            if n > 1 {
                self.scratch.copy_from_slice(x);
                rotate::to_cache(&mut self.scratch, n);
                encode(ty, &self.scratch, &mut dst[r.clone()]);
            } else {
                encode(ty, x, &mut dst[r.clone()]);
            }
        }
    }

    /// Overwrites the stored rows of `pos` with rows from [`KvCache::rows`].
    pub fn set_raw(&mut self, layer: usize, pos: usize, k: &[u8], v: &[u8]) {
        let r = self.range(layer, pos);
        let l = &mut self.layers[layer];
        l.k[r.clone()].copy_from_slice(k);
        l.v[r].copy_from_slice(v);
    }

    /// The stored key and value rows of `pos`, in the cache's type.
    #[inline]
    pub fn rows(&self, layer: usize, pos: usize) -> (&[u8], &[u8]) {
        let r = self.range(layer, pos);
        let l = &self.layers[layer];
        (&l.k[r.clone()], &l.v[r])
    }

    /// Applies `f` to the key row of `pos` in f32 and stores it back (a context shift's
    /// RoPE re-rotation: quantized rows are decoded and encoded again, and `f` sees the
    /// key itself, not its Hadamard rotation).
    pub fn update_key(
        &mut self,
        layer: usize,
        pos: usize,
        head_dim: usize,
        row: &mut [f32],
        f: impl Fn(&mut [f32]),
    ) {
        let r = self.range(layer, pos);
        let l = &mut self.layers[layer];
        let ty = l.layout.ty;
        let n = rotate::chunk(ty, head_dim);
        decode(ty, &l.k[r.clone()], 0, row);
        rotate::from_cache(row, n);
        f(row);
        rotate::to_cache(row, n);
        encode(ty, row, &mut l.k[r]);
    }
}

/// Q8_0 rows are whole blocks.
pub fn check_kv_dim(ty: KvType, kv_dim: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        ty != KvType::Q8_0 || kv_dim.is_multiple_of(QK),
        "a q8_0 KV cache needs rows that are a multiple of {QK} values, and this model's are \
         {kv_dim}: use --kv-type f16"
    );
    Ok(())
}

fn encode(ty: KvType, x: &[f32], out: &mut [u8]) {
    match ty {
        KvType::F32 => {
            for (v, c) in x.iter().zip(out.chunks_exact_mut(4)) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        KvType::F16 => {
            for (v, c) in x.iter().zip(out.chunks_exact_mut(2)) {
                c.copy_from_slice(&f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        KvType::Q8_0 => {
            crate::quant::quantize_row(GgmlType::Q8_0, x, out).expect("whole Q8_0 blocks");
        }
        KvType::Fp8 => fp8::encode_row(x, out),
    }
}

/// Decodes values `off..off + out.len()` of a stored row.
#[inline]
pub fn decode(ty: KvType, row: &[u8], off: usize, out: &mut [f32]) {
    match ty {
        KvType::F32 => {
            for (c, y) in row[off * 4..].chunks_exact(4).zip(out.iter_mut()) {
                *y = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        KvType::F16 => f16row::decode(&row[off * 2..(off + out.len()) * 2], out),
        KvType::Fp8 => fp8::decode_row(row, off, out),
        KvType::Q8_0 => {
            let blocks = as_blocks::<BlockQ8_0>(row).expect("whole Q8_0 blocks");
            if off.is_multiple_of(QK) && out.len().is_multiple_of(QK) {
                // Whole blocks: the common case (heads of 64 or 128), one vector loop each.
                for (o, b) in out.chunks_exact_mut(QK).zip(&blocks[off / QK..]) {
                    let d = f16::from_bits(u16::from_le_bytes(b.d)).to_f32_const();
                    for (y, &q) in o.iter_mut().zip(&b.qs) {
                        *y = q as f32 * d;
                    }
                }
                return;
            }
            let mut i = off;
            let end = off + out.len();
            let mut o = 0;
            while i < end {
                let b = &blocks[i / QK];
                let d = f16::from_bits(u16::from_le_bytes(b.d)).to_f32();
                let stop = end.min((i / QK + 1) * QK);
                for j in i..stop {
                    out[o] = b.qs[j % QK] as f32 * d;
                    o += 1;
                }
                i = stop;
            }
        }
    }
}
