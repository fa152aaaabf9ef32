//! Blocked attention (flash-attention style) for a batch of query rows.
//!
//! Threads take work items of one KV group, a chunk of query rows and some of the group's
//! query heads. An item walks the tiles of positions its rows read: it decodes each tile's
//! keys and values once into f32 scratch, then runs every query of the item over them with
//! an online softmax (a running maximum and sum per query), so the cache is read once per
//! item instead of once per (row, head), and no score row is ever stored whole.
//!
//! A Q8_0 cache holds keys and values Hadamard-rotated (`kv::rotate`): queries are
//! rotated alike on the way in and outputs turned back on the way out.

mod kernel;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

use std::ops::Range;

use kernel::{Isa, Queries, TILE};

use super::pool::{SharedMut, ThreadPool};
use crate::backend::AttnShape;
use crate::kv::{decode, rotate, KvCache};

/// Queries an item aims at: enough to spread each tile's decoding thin, few enough that
/// their running state stays in L2.
const ITEM_QUERIES: usize = 128;

/// One thread's buffers, grown to the largest item seen and then reused.
#[derive(Default)]
pub struct Scratch {
    q: Vec<f32>,
    acc: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    /// The tile's keys, transposed: `hd` rows of `TILE` positions.
    kt: Vec<f32>,
    /// The tile's values: `TILE` rows of `hd`.
    v: Vec<f32>,
    p: Vec<f32>,
    row: Vec<f32>,
}

impl Scratch {
    fn reserve(&mut self, queries: usize, hd: usize) {
        let grow = |v: &mut Vec<f32>, n: usize| {
            if v.len() < n {
                v.resize(n, 0.0);
            }
        };
        grow(&mut self.q, queries * hd);
        grow(&mut self.acc, queries * hd);
        grow(&mut self.m, queries);
        grow(&mut self.l, queries);
        grow(&mut self.kt, hd * TILE);
        grow(&mut self.v, TILE * hd);
        grow(&mut self.p, 4 * TILE);
        grow(&mut self.row, hd);
    }
}

/// Causal attention of `rows` query rows at `pos0..` (rows of `s.q_dim()` in `q` and
/// `out`) over the positions the layer's layout keeps live for each.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    scratch: &mut Vec<Scratch>,
    q: &[f32],
    kv: &KvCache,
    layer: usize,
    pos0: usize,
    rows: usize,
    s: AttnShape,
    out: &mut [f32],
) {
    let t = pool.n_threads();
    if scratch.len() < t {
        scratch.resize_with(t, Scratch::default);
    }
    let group = s.n_heads / s.n_kv_heads;
    let chunk = (ITEM_QUERIES / group).clamp(1, 64);
    let chunks = rows.div_ceil(chunk);
    // A decode step has one row: its groups are split by heads until every thread has
    // work (each head's result does not depend on the company it is computed in).
    let whole = s.n_kv_heads * chunks;
    let parts = if whole >= 2 * t {
        1
    } else {
        (2 * t).div_ceil(whole).min(group)
    };
    let per_part = group.div_ceil(parts);
    let parts = group.div_ceil(per_part);
    let items = whole * parts;
    let isa = Isa::detect(s.head_dim);
    let out = SharedMut::new(&mut out[..rows * s.q_dim()]);
    let scratch = SharedMut::new(&mut scratch[..t]);
    pool.run(|i| {
        // SAFETY: one scratch per thread.
        let sc = unsafe { &mut scratch.slice(i, 1)[0] };
        sc.reserve(chunk * per_part, s.head_dim);
        // Items go round-robin, chunk by chunk: later rows read more positions, and each
        // thread gets its share of every chunk.
        for item in (i..items).step_by(t) {
            let (c, rest) = (item / (s.n_kv_heads * parts), item % (s.n_kv_heads * parts));
            let (g, part) = (rest / parts, rest % parts);
            let r = c * chunk..((c + 1) * chunk).min(rows);
            let h0 = g * group + part * per_part;
            let h = h0..(h0 + per_part).min((g + 1) * group);
            let item = Item {
                kv,
                layer,
                pos0,
                rows: r,
                heads: h,
                g,
                s,
                isa,
            };
            item.run(sc, q, out);
        }
    });
}

struct Item<'a> {
    kv: &'a KvCache,
    layer: usize,
    pos0: usize,
    rows: Range<usize>,
    heads: Range<usize>,
    g: usize,
    s: AttnShape,
    isa: Isa,
}

impl Item<'_> {
    fn run(&self, sc: &mut Scratch, q: &[f32], out: SharedMut<f32>) {
        let (hd, qd) = (self.s.head_dim, self.s.q_dim());
        let layout = self.kv.layout(self.layer);
        let rot = rotate::chunk(layout.ty, hd);
        let nh = self.heads.len();
        let n = self.rows.len() * nh;
        // Scores in base 2: the exponential is then 2^x.
        let scale = std::f32::consts::LOG2_E / (hd as f32).sqrt();
        for (bi, b) in self.rows.clone().enumerate() {
            for (hi, h) in self.heads.clone().enumerate() {
                let dst = &mut sc.q[(bi * nh + hi) * hd..][..hd];
                dst.copy_from_slice(&q[b * qd + h * hd..][..hd]);
                rotate::query(dst, rot);
                dst.iter_mut().for_each(|x| *x *= scale);
            }
        }
        sc.acc[..n * hd].fill(0.0);
        sc.m[..n].fill(f32::NEG_INFINITY);
        sc.l[..n].fill(0.0);

        // The positions any row reads: sinks from 0, and the rest.
        let live = |bi: usize| layout.live(self.pos0 + self.rows.start + bi);
        let mut sinks = 0..0;
        let mut rest: Option<Range<usize>> = None;
        for bi in 0..self.rows.len() {
            let (sk, r) = live(bi);
            sinks.end = sinks.end.max(sk.end);
            if !r.is_empty() {
                rest = Some(rest.map_or(r.clone(), |x| x.start.min(r.start)..x.end.max(r.end)));
            }
        }
        let rest = rest.unwrap_or(0..0);
        let sink_tiles = sinks.end.div_ceil(TILE);
        let rest_tiles = (rest.start / TILE).max(sink_tiles)..rest.end.div_ceil(TILE);
        for k in (0..sink_tiles).chain(rest_tiles) {
            let t0 = k * TILE;
            self.load(sc, t0, &sinks, &rest);
            for bi in 0..self.rows.len() {
                let mask = row_mask(live(bi), t0);
                if mask == 0 {
                    continue;
                }
                let mut h = 0;
                while h < nh {
                    let (i0, i1) = (bi * nh + h, bi * nh + (h + 4).min(nh));
                    let qs = Queries {
                        q: &sc.q[i0 * hd..i1 * hd],
                        acc: &mut sc.acc[i0 * hd..i1 * hd],
                        m: &mut sc.m[i0..i1],
                        l: &mut sc.l[i0..i1],
                    };
                    kernel::tile(self.isa, qs, &sc.kt, &sc.v, hd, mask, &mut sc.p);
                    h += i1 - i0;
                }
            }
        }

        for (bi, b) in self.rows.clone().enumerate() {
            for (hi, h) in self.heads.clone().enumerate() {
                let i = bi * nh + hi;
                // SAFETY: this (row, head) belongs to this item alone.
                let o = unsafe { out.slice(b * qd + h * hd, hd) };
                let inv = 1.0 / sc.l[i];
                for (o, a) in o.iter_mut().zip(&sc.acc[i * hd..(i + 1) * hd]) {
                    *o = a * inv;
                }
                rotate::from_cache(o, rot);
            }
        }
    }

    /// Decodes the keys and values of the tile at `t0` that some row reads; the others
    /// are zeroed (no query weighs them, and zeros keep `0 * value` exactly zero).
    fn load(&self, sc: &mut Scratch, t0: usize, sinks: &Range<usize>, rest: &Range<usize>) {
        let hd = self.s.head_dim;
        let ty = self.kv.layout(self.layer).ty;
        let off = self.g * hd;
        for j in 0..TILE {
            let p = t0 + j;
            let v = &mut sc.v[j * hd..(j + 1) * hd];
            if sinks.contains(&p) || rest.contains(&p) {
                let (kr, vr) = self.kv.rows(self.layer, p);
                decode(ty, kr, off, &mut sc.row[..hd]);
                decode(ty, vr, off, v);
                for (d, &x) in sc.row[..hd].iter().enumerate() {
                    sc.kt[d * TILE + j] = x;
                }
            } else {
                v.fill(0.0);
                for d in 0..hd {
                    sc.kt[d * TILE + j] = 0.0;
                }
            }
        }
    }
}

/// Bit `j`: whether position `t0 + j` is live for a query whose live positions are
/// `live` (`KvLayout::live`).
fn row_mask(live: (Range<usize>, Range<usize>), t0: usize) -> u64 {
    let bits = |r: Range<usize>| {
        let (a, b) = (r.start.max(t0), r.end.min(t0 + TILE));
        if a >= b {
            0
        } else {
            (u64::MAX >> (TILE - (b - a))) << (a - t0)
        }
    };
    bits(live.0) | bits(live.1)
}
