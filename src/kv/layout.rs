//! Where each logical position of a layer's keys and values lives, shared by every backend.
//!
//! A layer's cache is a ring of `capacity` slots. The first `keep` positions (attention
//! sinks) have fixed slots; the rest rotate through the remaining slots, displaced by
//! `offset`, which grows on each context shift so that the slots of the keys that survive a
//! shift do not move. A sliding-window layer keeps no sinks and only reads the last
//! `window` positions, so its ring needs only the window plus some slack, which is what
//! lets a rollback (speculative decoding) reach back over positions it has overwritten.

use std::ops::Range;

use anyhow::{bail, Result};

/// Slots a sliding-window layer keeps beyond its window. A forward pass stores all its
/// rows before any of them attends, so the ring must hold a whole batch beyond the window;
/// the same room lets up to this many tokens be rolled back (speculative drafts).
pub const WINDOW_SLACK: usize = crate::model::MAX_BATCH;

/// How keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    F32,
    F16,
    /// ggml's Q8_0: blocks of 32 int8 values and one f16 scale along each row.
    Q8_0,
    /// One e4m3 byte per value and one scale per row (src/kv/fp8.rs).
    Fp8,
}

impl KvType {
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Fp8 => "fp8",
        }
    }

    pub fn parse(s: &str) -> Result<KvType> {
        Ok(match s {
            "f32" => KvType::F32,
            "f16" => KvType::F16,
            "q8_0" => KvType::Q8_0,
            "fp8" => KvType::Fp8,
            _ => bail!("unknown KV cache type {s:?} (expected f32, f16, q8_0 or fp8)"),
        })
    }

    /// Bytes of one row of `kv_dim` values.
    pub fn row_bytes(self, kv_dim: usize) -> usize {
        match self {
            KvType::F32 => kv_dim * 4,
            KvType::F16 => kv_dim * 2,
            KvType::Q8_0 => kv_dim / 32 * 34,
            KvType::Fp8 => super::fp8::row_bytes(kv_dim),
        }
    }

    pub fn id(self) -> u8 {
        match self {
            KvType::F32 => 0,
            KvType::F16 => 1,
            KvType::Q8_0 => 8,
            // Not a ggml type id; kernels/cuda/common.cuh calls it T_FP8.
            KvType::Fp8 => 64,
        }
    }
}

/// The cache of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub capacity: usize,
    /// Leading positions that are never discarded (0 for sliding-window layers).
    pub keep: usize,
    /// Attend only to the last `window` positions.
    pub window: Option<usize>,
    pub ty: KvType,
    /// Positions discarded by context shifts so far, modulo nothing: added to a position
    /// before it is reduced to a slot.
    pub offset: usize,
    /// The lowest non-sink position a sliding-window layer still holds after a context
    /// shift (0 until one happens).
    pub floor: usize,
}

/// What the user chose for the cache, before the model's shape is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvSettings {
    /// Positions of a full-attention layer: `--ctx`.
    pub ctx: usize,
    /// Attention sinks kept by a context shift: `--keep`.
    pub keep: usize,
    pub ty: KvType,
    /// A window for every layer, overriding the model's (for tests and experiments).
    pub window: Option<usize>,
}

impl KvSettings {
    pub fn new(ctx: usize) -> KvSettings {
        KvSettings {
            ctx,
            keep: 4,
            ty: KvType::F16,
            window: None,
        }
    }
}

impl KvLayout {
    /// The layout of a layer whose window is `window` (None: full attention).
    pub fn new(s: &KvSettings, window: Option<usize>) -> KvLayout {
        match s.window.or(window) {
            // A window as wide as the context never excludes anything.
            Some(w) if w < s.ctx => KvLayout {
                capacity: w + WINDOW_SLACK,
                keep: 0,
                window: Some(w.max(1)),
                ty: s.ty,
                offset: 0,
                floor: 0,
            },
            _ => KvLayout {
                capacity: s.ctx,
                // At least one slot rotates, so the ring is never empty.
                keep: s.keep.min(s.ctx.saturating_sub(1)),
                window: None,
                ty: s.ty,
                offset: 0,
                floor: 0,
            },
        }
    }

    /// The slot of logical position `p`.
    #[inline]
    pub fn slot(&self, p: usize) -> usize {
        if p < self.keep {
            p
        } else {
            self.keep + (p - self.keep + self.offset) % (self.capacity - self.keep)
        }
    }

    /// The positions a query at `q` attends to, as two ranges (sinks, then the rest); the
    /// caller has made sure position `q` is stored.
    #[inline]
    pub fn live(&self, q: usize) -> (Range<usize>, Range<usize>) {
        match self.window {
            Some(w) => (0..0, (q + 1).saturating_sub(w).max(self.floor)..q + 1),
            None => {
                let sinks = self.keep.min(q + 1);
                let ring = self.capacity - self.keep;
                (0..sinks, sinks.max((q + 1).saturating_sub(ring))..q + 1)
            }
        }
    }

    /// Positions whose keys a shift must re-rotate, out of `0..len`: those that survive it
    /// and are still stored. `from..len` with `from` counted before the shift.
    pub fn stored(&self, len: usize) -> Range<usize> {
        match self.window {
            Some(_) => self.floor.max(len.saturating_sub(self.capacity))..len,
            None => 0..len,
        }
    }

    /// This layout after positions `start..start + d` are discarded from a sequence of
    /// `len` and the later ones renumbered down by `d`.
    pub fn shifted(&self, start: usize, d: usize, len: usize) -> KvLayout {
        let mut l = *self;
        l.offset += d;
        if l.window.is_some() {
            // Keys below the discarded range would need slots of their own (a window layer
            // has no sinks): they are dropped with it.
            l.floor = self.stored(len).start.max(start + d) - d;
        }
        l
    }

    /// Whether positions `len..` can be forgotten with every earlier one still intact,
    /// when `cur` positions have been stored.
    pub fn can_roll_back(&self, len: usize, cur: usize) -> bool {
        match self.window {
            Some(w) => len >= self.floor && cur - len <= self.capacity - w,
            None => true,
        }
    }

    /// Fails unless `rows` positions from `pos0` can be stored without overwriting one
    /// that their queries still read.
    pub fn check_store(&self, pos0: usize, rows: usize) -> Result<()> {
        match self.window {
            Some(w) if rows > self.capacity - w => {
                bail!("a batch of {rows} tokens is larger than the window's slack")
            }
            None if pos0 + rows > self.capacity => bail!(
                "position {} is past the context size {}",
                pos0 + rows - 1,
                self.capacity
            ),
            _ => Ok(()),
        }
    }

    /// Bytes of this layer's keys and values.
    pub fn bytes(&self, kv_dim: usize) -> usize {
        2 * self.capacity * self.ty.row_bytes(kv_dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(capacity: usize, keep: usize) -> KvLayout {
        KvLayout::new(
            &KvSettings {
                ctx: capacity,
                keep,
                ty: KvType::F32,
                window: None,
            },
            None,
        )
    }

    #[test]
    fn slots_of_surviving_positions_do_not_move_on_a_shift() {
        let l = full(16, 4);
        let (start, d, len) = (4, 6, 16);
        let s = l.shifted(start, d, len);
        for p in 0..start {
            assert_eq!(l.slot(p), s.slot(p));
        }
        for p in start + d..len {
            assert_eq!(l.slot(p), s.slot(p - d), "position {p}");
        }
        // New positions take exactly the freed slots.
        let mut freed: Vec<usize> = (start..start + d).map(|p| l.slot(p)).collect();
        let mut fresh: Vec<usize> = (len - d..len).map(|p| s.slot(p)).collect();
        freed.sort();
        fresh.sort();
        assert_eq!(freed, fresh);
    }

    #[test]
    fn a_window_reads_its_last_positions() {
        let s = KvSettings {
            ctx: 100,
            keep: 4,
            ty: KvType::F16,
            window: Some(8),
        };
        let l = KvLayout::new(&s, None);
        assert_eq!((l.keep, l.capacity), (0, 8 + WINDOW_SLACK));
        assert_eq!(l.live(3), (0..0, 0..4));
        assert_eq!(l.live(30), (0..0, 23..31));
        assert!(l.can_roll_back(100 - WINDOW_SLACK, 100));
        assert!(!l.can_roll_back(100 - WINDOW_SLACK - 1, 100));
    }
}
