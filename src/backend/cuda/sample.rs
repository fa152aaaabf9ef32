//! Sampling on the device (kernels/cuda/spec_sample.cu): the settings and buffers behind
//! `DeviceSpec::{sample_setup, pick_sampled, judge_sampled}` (speculation) and
//! `DeviceSpec::{plain_setup, plain_pick}` (plain decoding).

use std::cell::{Cell, RefCell};

use anyhow::{ensure, Result};

use super::{check, ffi, DeviceMem};
use crate::model::MAX_BATCH;
use crate::sample::{Probs, SamplerParams};

/// Most candidates a distribution sampled on the device keeps after top-k.
pub(super) const SAMPLE_CAP: usize = ffi::WICK_SAMPLE_CAP as usize;

/// Mixed into the seeds of the device's random numbers: the host sampler still draws some
/// tokens (the first after a prompt, plain steps) from the same seed, and the two streams
/// must not repeat each other's numbers.
const DEVICE_STREAM: u64 = 0xd1ce_5eed_0f5a_3b1e;

/// The device's form of a sampler's settings, where it can follow them: temperature above
/// 0, no repeat penalty (which needs the history), and at most `SAMPLE_CAP` tokens left by
/// top-k.
pub(super) fn device_cfg(p: &SamplerParams, vocab: usize) -> Option<ffi::wick_sample_cfg> {
    let penalty = p.penalizes();
    // As the host's top-k: 0, or at least the vocabulary, keeps every token.
    let k = if p.top_k == 0 || p.top_k >= vocab {
        vocab
    } else {
        p.top_k
    };
    if p.temp <= 0.0 || penalty || vocab == 0 || k > SAMPLE_CAP {
        return None;
    }
    let min_p_on = p.min_p > 0.0;
    Some(ffi::wick_sample_cfg {
        k: k as i32,
        top_p: p.top_p,
        // ln on the host, as the host's min-p computes it.
        ln_min_p: if min_p_on { p.min_p.ln() } else { 0.0 },
        min_p_on: min_p_on as i32,
        inv_t: 1.0 / p.temp as f64,
    })
}

/// How plain decoding picks on the device.
#[derive(Clone, Copy)]
enum PlainMode {
    /// The argmax (temperature 0), by speculation's greedy pick.
    Greedy,
    /// A draw, as `Sampler::sample` draws.
    Sampled(ffi::wick_sample_cfg),
}

/// Most tokens plain decoding's mask may hold on the device (the end-of-generation tokens
/// of `--ignore-eos` are a handful).
const MASK_CAP: usize = 256;

/// Random streams: the model's and the draft's in speculation, plain decoding's.
const STREAMS: usize = 3;
const PLAIN_STREAM: usize = 2;

/// Device state of sampling: the random streams; for speculation the draft's distributions
/// (dense rows of the vocabulary, one per draft token) and the model's (compact rows of
/// at most `SAMPLE_CAP` candidates, one per verified row); for plain decoding its mode,
/// mask and pick.
pub(super) struct SampleScratch {
    /// xoshiro256** states of 4 u64 each, `STREAMS` of them.
    rng: DeviceMem,
    p_ids: DeviceMem,
    p_probs: DeviceMem,
    p_cnt: DeviceMem,
    /// `MAX_BATCH` rows of the vocabulary, allocated by the first setup with a sampled draft.
    q: RefCell<Option<DeviceMem>>,
    target: Cell<Option<ffi::wick_sample_cfg>>,
    /// `None`: the proposals are one-hot.
    draft: Cell<Option<ffi::wick_sample_cfg>>,
    /// Plain decoding's mode and vocabulary, once set up.
    plain: Cell<Option<(PlainMode, usize)>>,
    /// Plain decoding's masked tokens (`MASK_CAP`), `plain_masked` of them in use.
    plain_mask: DeviceMem,
    plain_masked: Cell<usize>,
    /// Picks queued (`wick_id_post`) and taken so far: slot `n % ID_SLOTS` holds pick n.
    plain_posted: Cell<usize>,
    plain_taken: Cell<usize>,
}

/// Picks whose ids may be on their way to the host at once (slots of `wick_id_post`).
const ID_SLOTS: usize = 4;

impl SampleScratch {
    pub(super) fn new() -> Result<SampleScratch> {
        let rows = MAX_BATCH + 1;
        Ok(SampleScratch {
            rng: DeviceMem::zeroed(STREAMS * 4 * 8)?,
            p_ids: DeviceMem::zeroed(rows * SAMPLE_CAP * 4)?,
            p_probs: DeviceMem::zeroed(rows * SAMPLE_CAP * 4)?,
            p_cnt: DeviceMem::zeroed(rows * 4)?,
            q: RefCell::new(None),
            target: Cell::new(None),
            draft: Cell::new(None),
            plain: Cell::new(None),
            plain_mask: DeviceMem::zeroed(MASK_CAP * 4)?,
            plain_masked: Cell::new(0),
            plain_posted: Cell::new(0),
            plain_taken: Cell::new(0),
        })
    }

    fn rng(&self, which: usize) -> *mut u64 {
        assert!(which < STREAMS, "random stream {which}");
        // SAFETY: a state of 4 u64 inside `rng` (checked above).
        unsafe { self.rng.ptr.cast::<u64>().add(4 * which) }
    }

    /// Plain decoding on the device (`DeviceSpec::plain_setup`): greedy without a repeat
    /// penalty, or sampled with settings `device_cfg` follows; the stream continues from
    /// the host sampler's `rng`.
    pub(super) fn plain_setup(
        &self,
        p: &SamplerParams,
        rng: [u64; 4],
        mask: &[u32],
        vocab: usize,
    ) -> Result<bool> {
        let mode = if p.temp <= 0.0 {
            if p.penalizes() || vocab == 0 {
                return Ok(false);
            }
            PlainMode::Greedy
        } else {
            match device_cfg(p, vocab) {
                Some(c) => PlainMode::Sampled(c),
                None => return Ok(false),
            }
        };
        // A pick a previous decoding queued ahead and never took is not this one's.
        self.plain_forget();
        // The host skips ids past the vocabulary, and masking one twice changes nothing.
        let mut ids: Vec<u32> = mask
            .iter()
            .copied()
            .filter(|&m| (m as usize) < vocab)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > MASK_CAP {
            return Ok(false);
        }
        if !ids.is_empty() {
            h2d(&self.plain_mask, &ids)?;
        }
        // SAFETY: the plain stream's 4 u64 inside `rng`.
        check(
            unsafe {
                ffi::wick_cuda_h2d(
                    self.rng(PLAIN_STREAM).cast(),
                    rng.as_ptr().cast(),
                    std::mem::size_of_val(&rng),
                )
            },
            "copy the sampler's state to the GPU",
        )?;
        self.plain_masked.set(ids.len());
        self.plain.set(Some((mode, vocab)));
        Ok(true)
    }

    /// `DeviceSpec::plain_queue`: queues the mask and the pick, which writes its id into a
    /// mapped slot of host memory, and marks the slot behind them.
    pub(super) fn plain_queue(
        &self,
        logits: &DeviceMem,
        vocab: usize,
        params: &DeviceMem,
        next_pos: usize,
    ) -> Result<()> {
        let (posted, taken) = (self.plain_posted.get(), self.plain_taken.get());
        ensure!(
            posted - taken < ID_SLOTS,
            "{ID_SLOTS} picks queued and none taken"
        );
        let Some((mode, set_vocab)) = self.plain.get() else {
            anyhow::bail!("plain pick without plain decoding set up on the GPU");
        };
        ensure!(
            vocab == set_vocab && vocab * 4 <= logits.bytes && next_pos <= i32::MAX as usize,
            "plain pick of {vocab} logits out of bounds"
        );
        let masked = self.plain_masked.get();
        // SAFETY: `masked` ids below `vocab` (plain_setup), inside the logits (checked above).
        check(
            unsafe {
                ffi::wick_mask_logits(logits.f32(), self.plain_mask.ptr.cast(), masked as i32)
            },
            "masking tokens",
        )?;
        let slot = (posted % ID_SLOTS) as i32;
        let mut out: *mut i32 = std::ptr::null_mut();
        // SAFETY: a slot below ID_SLOTS; writes one pointer.
        check(
            unsafe { ffi::wick_id_slot(slot, &mut out) },
            "mapping a token id for the host",
        )?;
        match mode {
            // SAFETY: bounds checked above; params holds a position and a token, out (the
            // slot's mapped int) one value; no probability is written.
            PlainMode::Greedy => check(
                unsafe {
                    ffi::wick_spec_pick(
                        logits.f32(),
                        vocab as i32,
                        params.ptr.cast(),
                        next_pos as i32,
                        out,
                        std::ptr::null_mut(),
                        0,
                    )
                },
                "picking a token",
            )?,
            // SAFETY: as above; the cfg's k fits the vocabulary (device_cfg).
            PlainMode::Sampled(cfg) => check(
                unsafe {
                    ffi::wick_plain_sample(
                        logits.f32(),
                        vocab as i32,
                        cfg,
                        self.rng(PLAIN_STREAM),
                        params.ptr.cast(),
                        next_pos as i32,
                        out,
                    )
                },
                "sampling a token",
            )?,
        }
        // SAFETY: a slot below ID_SLOTS, set up by wick_id_slot above.
        check(unsafe { ffi::wick_id_post(slot) }, "marking a token id")?;
        self.plain_posted.set(posted + 1);
        Ok(())
    }

    /// `DeviceSpec::plain_take`: waits for the oldest queued pick's id.
    pub(super) fn plain_take(&self) -> Result<u32> {
        let taken = self.plain_taken.get();
        ensure!(taken < self.plain_posted.get(), "no pick queued to take");
        let Some((_, vocab)) = self.plain.get() else {
            anyhow::bail!("plain pick without plain decoding set up on the GPU");
        };
        let mut id = 0i32;
        // SAFETY: a slot below ID_SLOTS that wick_id_post filled; writes one int.
        check(
            unsafe { ffi::wick_id_take((taken % ID_SLOTS) as i32, &mut id) },
            "a kernel",
        )?;
        self.plain_taken.set(taken + 1);
        ensure!(
            (0..vocab as i64).contains(&(id as i64)),
            "the GPU picked token {id} of a vocabulary of {vocab}"
        );
        Ok(id as u32)
    }

    /// `DeviceSpec::plain_forget`: the queued picks' ids are never read.
    pub(super) fn plain_forget(&self) {
        self.plain_taken.set(self.plain_posted.get());
    }

    /// `DeviceSpec::plain_ahead`: greedy picks draw nothing from a random stream, so one
    /// the host never takes changes nothing it will see.
    pub(super) fn plain_ahead(&self) -> bool {
        matches!(self.plain.get(), Some((PlainMode::Greedy, _)))
    }

    /// Plain decoding's random stream as it stands now (self-test).
    pub(super) fn plain_rng_state(&self) -> Result<[u64; 4]> {
        let mut all = [0u64; STREAMS * 4];
        d2h(&mut all, &self.rng)?;
        let mut s = [0u64; 4];
        s.copy_from_slice(&all[4 * PLAIN_STREAM..4 * PLAIN_STREAM + 4]);
        Ok(s)
    }

    pub(super) fn setup(
        &self,
        target: &SamplerParams,
        draft: Option<&SamplerParams>,
        vocab: usize,
    ) -> Result<bool> {
        let Some(t) = device_cfg(target, vocab) else {
            return Ok(false);
        };
        let d = match draft {
            Some(p) => match device_cfg(p, vocab) {
                Some(c) => Some(c),
                None => return Ok(false),
            },
            None => None,
        };
        if d.is_some() {
            let mut q = self.q.borrow_mut();
            let bytes = MAX_BATCH * vocab * 4;
            if q.as_ref().is_none_or(|m| m.bytes < bytes) {
                *q = Some(DeviceMem::zeroed(bytes)?);
            }
        }
        self.seed(
            target.seed ^ DEVICE_STREAM,
            draft.map_or(0, |p| p.seed ^ DEVICE_STREAM),
        )?;
        self.target.set(Some(t));
        self.draft.set(d);
        Ok(true)
    }

    /// Seeds the model's and the draft's streams as a host `Sampler` of these seeds is seeded.
    pub(super) fn seed(&self, target: u64, draft: u64) -> Result<()> {
        for (which, seed) in [(0, target), (1, draft)] {
            // SAFETY: a state of 4 u64 inside `rng`.
            check(
                unsafe { ffi::wick_sample_seed(self.rng(which), seed) },
                "seeding the GPU's sampler",
            )?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn pick(
        &self,
        logits: &DeviceMem,
        vocab: usize,
        params: &DeviceMem,
        proposals: &DeviceMem,
        top: &DeviceMem,
        i: usize,
        next_pos: usize,
    ) -> Result<()> {
        let cfg = self.draft.get();
        let q = self.q.borrow();
        let (Some(cfg), Some(q)) = (cfg, q.as_ref()) else {
            anyhow::bail!("sampled draft token without a sampled draft set up");
        };
        ensure!(
            i < MAX_BATCH
                && vocab > 0
                && vocab * 4 <= logits.bytes
                && MAX_BATCH * vocab * 4 <= q.bytes,
            "sampled draft pick {i} of {vocab} logits out of bounds"
        );
        // SAFETY: bounds checked above; params holds a position and a token, proposals and
        // top MAX_BATCH values.
        check(
            unsafe {
                ffi::wick_spec_pick_sampled(
                    logits.f32(),
                    vocab as i32,
                    cfg,
                    self.rng(1),
                    params.ptr.cast(),
                    next_pos as i32,
                    proposals.ptr.cast(),
                    top.f32(),
                    q.f32(),
                    i as i32,
                )
            },
            "sampling a draft token",
        )
    }

    /// Queues the model's distributions of `n + 1` rows and the acceptance of `n`
    /// proposals, its verdict into `out`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn judge(
        &self,
        rows: &DeviceMem,
        vocab: usize,
        n: usize,
        draft_min: usize,
        p_min: f32,
        proposals: &DeviceMem,
        top: &DeviceMem,
        out: &DeviceMem,
    ) -> Result<()> {
        let Some(cfg) = self.target.get() else {
            anyhow::bail!("sampled judging without a sampled model set up");
        };
        ensure!(
            n < MAX_BATCH && vocab > 0 && (n + 1) * vocab * 4 <= rows.bytes,
            "judging {n} proposals out of bounds"
        );
        self.sample_rows(rows, n + 1, vocab, cfg)?;
        let dense_q = self.draft.get().is_some();
        self.accept(vocab, n, draft_min, p_min, dense_q, proposals, top, out)
    }

    /// Queues the model's sampling distributions of `rows` rows of `x` into the scratch
    /// (compact rows of at most `SAMPLE_CAP` candidates). The callers check that `x`
    /// holds `rows` rows of `vocab` and that `rows` is at most `MAX_BATCH + 1`.
    fn sample_rows(
        &self,
        x: &DeviceMem,
        rows: usize,
        vocab: usize,
        cfg: ffi::wick_sample_cfg,
    ) -> Result<()> {
        ensure!(
            rows <= MAX_BATCH + 1 && rows * vocab * 4 <= x.bytes,
            "sample rows out of bounds"
        );
        // SAFETY: bounds checked above; the scratch holds MAX_BATCH + 1 rows of SAMPLE_CAP.
        check(
            unsafe {
                ffi::wick_sample_rows(
                    x.f32(),
                    rows as i32,
                    vocab as i32,
                    cfg,
                    self.p_ids.ptr.cast(),
                    self.p_probs.f32(),
                    self.p_cnt.ptr.cast(),
                )
            },
            "the model's sampling distributions",
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn accept(
        &self,
        vocab: usize,
        n: usize,
        draft_min: usize,
        p_min: f32,
        dense_q: bool,
        proposals: &DeviceMem,
        top: &DeviceMem,
        out: &DeviceMem,
    ) -> Result<()> {
        let q = self.q.borrow();
        let q = match q.as_ref() {
            Some(q) if dense_q => {
                ensure!(MAX_BATCH * vocab * 4 <= q.bytes, "q rows out of bounds");
                q.f32().cast_const()
            }
            None if dense_q => anyhow::bail!("no sampled draft set up"),
            _ => std::ptr::null(),
        };
        // SAFETY: rows 0..=n of the scratch were written by wick_sample_rows (or upload);
        // q holds MAX_BATCH rows of `vocab` when not null; out holds MAX_BATCH + 3 values.
        check(
            unsafe {
                ffi::wick_spec_accept(
                    self.p_ids.ptr.cast(),
                    self.p_probs.f32(),
                    self.p_cnt.ptr.cast(),
                    q,
                    vocab as i32,
                    proposals.ptr.cast(),
                    top.f32(),
                    n as i32,
                    draft_min.min(i32::MAX as usize) as i32,
                    p_min,
                    self.rng(0),
                    out.ptr.cast(),
                )
            },
            "accepting a sampled draft",
        )
    }

    /// The model's distributions of `rows` rows as the device computes them (self-test).
    pub(super) fn rows(
        &self,
        x: &DeviceMem,
        rows: usize,
        vocab: usize,
        params: &SamplerParams,
    ) -> Result<Vec<Vec<(u32, f32)>>> {
        let cfg = device_cfg(params, vocab).ok_or_else(|| {
            anyhow::anyhow!("the GPU cannot sample with {params:?} over {vocab} tokens")
        })?;
        ensure!(
            rows > 0 && rows <= MAX_BATCH + 1 && rows * vocab * 4 <= x.bytes,
            "sample rows out of bounds"
        );
        self.sample_rows(x, rows, vocab, cfg)?;
        let mut ids = vec![0u32; rows * SAMPLE_CAP];
        let mut probs = vec![0f32; rows * SAMPLE_CAP];
        let mut cnt = vec![0i32; rows];
        d2h(&mut ids, &self.p_ids)?;
        d2h(&mut probs, &self.p_probs)?;
        d2h(&mut cnt, &self.p_cnt)?;
        Ok((0..rows)
            .map(|r| {
                let c = (cnt[r].max(0) as usize).min(SAMPLE_CAP);
                let at = r * SAMPLE_CAP;
                ids[at..at + c]
                    .iter()
                    .copied()
                    .zip(probs[at..at + c].iter().copied())
                    .collect()
            })
            .collect())
    }

    /// Uploads the model's distributions `p` (`n + 1` rows) and, unless one-hot, the
    /// draft's `q` (`n` rows), then queues the acceptance kernel alone (self-test: the
    /// kernel against the host's rule on the same distributions and random numbers).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn accept_given(
        &self,
        p: &[Probs],
        q: Option<&[Probs]>,
        vocab: usize,
        draft_min: usize,
        p_min: f32,
        proposals: &DeviceMem,
        top: &DeviceMem,
        out: &DeviceMem,
    ) -> Result<()> {
        let n = p.len().saturating_sub(1);
        ensure!(
            !p.is_empty() && n < MAX_BATCH && q.is_none_or(|q| q.len() == n),
            "accept_given: {} rows of p for {n} proposals",
            p.len()
        );
        let mut ids = vec![0u32; p.len() * SAMPLE_CAP];
        let mut probs = vec![0f32; p.len() * SAMPLE_CAP];
        let mut cnt = vec![0i32; p.len()];
        for (r, row) in p.iter().enumerate() {
            ensure!(row.items().len() <= SAMPLE_CAP, "a row of p is too wide");
            cnt[r] = row.items().len() as i32;
            for (j, &(id, w)) in row.items().iter().enumerate() {
                ids[r * SAMPLE_CAP + j] = id;
                probs[r * SAMPLE_CAP + j] = w;
            }
        }
        h2d(&self.p_ids, &ids)?;
        h2d(&self.p_probs, &probs)?;
        h2d(&self.p_cnt, &cnt)?;
        if let Some(q) = q {
            let mut dense = vec![0f32; MAX_BATCH * vocab];
            for (r, row) in q.iter().enumerate() {
                for &(id, w) in row.items() {
                    dense[r * vocab + id as usize] = w;
                }
            }
            let mut slot = self.q.borrow_mut();
            if slot.as_ref().is_none_or(|m| m.bytes < dense.len() * 4) {
                *slot = Some(DeviceMem::zeroed(dense.len() * 4)?);
            }
            h2d(slot.as_ref().expect("allocated above"), &dense)?;
        }
        self.accept(vocab, n, draft_min, p_min, q.is_some(), proposals, top, out)
    }

    /// The draft's distributions of rows `0..rows` (self-test).
    pub(super) fn q_rows(&self, rows: usize, vocab: usize) -> Result<Vec<f32>> {
        let q = self.q.borrow();
        let Some(q) = q.as_ref() else {
            anyhow::bail!("no sampled draft set up");
        };
        ensure!(rows * vocab * 4 <= q.bytes, "q rows out of bounds");
        let mut out = vec![0f32; rows * vocab];
        d2h(&mut out, q)?;
        Ok(out)
    }
}

fn d2h<T: Copy>(dst: &mut [T], src: &DeviceMem) -> Result<()> {
    let bytes = std::mem::size_of_val(dst);
    ensure!(bytes <= src.bytes, "read past the end of a device buffer");
    // SAFETY: bounds checked above; plain values.
    check(
        unsafe { ffi::wick_cuda_d2h(dst.as_mut_ptr().cast(), src.ptr, bytes) },
        "copy from the GPU",
    )
}

fn h2d<T: Copy>(dst: &DeviceMem, src: &[T]) -> Result<()> {
    let bytes = std::mem::size_of_val(src);
    ensure!(bytes <= dst.bytes, "write past the end of a device buffer");
    // SAFETY: bounds checked above; plain values.
    check(
        unsafe { ffi::wick_cuda_h2d(dst.ptr, src.as_ptr().cast(), bytes) },
        "copy to the GPU",
    )
}
