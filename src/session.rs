//! A running sequence: a model, its state, and the tokens it has seen so far.
//!
//! The cache holds positions `0..len()`. After a context shift these are no longer the
//! whole history: the first `keep` tokens, then everything after the discarded ones.
//! `tokens()` stays the full history (the repeat penalty looks at it).

use anyhow::{bail, ensure, Result};

use crate::backend::Backend;
use crate::kv::KvSettings;
use crate::model::{Llama, Logits, State};

pub struct Session<'m, 'a, B: Backend<'a>> {
    model: &'m Llama<'a, B>,
    state: State<'a, B>,
    /// Every token fed so far.
    tokens: Vec<u32>,
    /// Tokens after the first `keep` that context shifts dropped from the cache.
    discarded: usize,
    /// The last this many of `tokens` were staged on the device (`step_staged`,
    /// `verify_staged`) and stand as placeholders until `settle_staged` names them.
    staged: usize,
}

impl<'m, 'a, B: Backend<'a>> Session<'m, 'a, B> {
    pub fn new(model: &'m Llama<'a, B>, ctx: usize) -> Result<Session<'m, 'a, B>> {
        Self::with_settings(model, &KvSettings::new(ctx))
    }

    pub fn with_settings(model: &'m Llama<'a, B>, s: &KvSettings) -> Result<Session<'m, 'a, B>> {
        ensure!(s.ctx > 0, "the context must hold at least one token");
        Ok(Session {
            model,
            state: model.new_state_with(s)?,
            tokens: Vec::with_capacity(s.ctx),
            discarded: 0,
            staged: 0,
        })
    }

    /// The most tokens one forward pass takes (prefill runs in chunks of it).
    pub fn max_batch(&self) -> usize {
        self.state.max_batch()
    }

    pub fn ctx(&self) -> usize {
        self.state.capacity()
    }

    /// Logits per position.
    pub fn vocab(&self) -> usize {
        self.model.config.vocab_size
    }

    /// Every token fed so far, including those a context shift dropped from the cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Positions in the cache; the next token goes to this position.
    pub fn len(&self) -> usize {
        self.tokens.len() - self.discarded
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokens whose keys and values are in the cache at positions `0..`, when they
    /// are a prefix of the history (no context shift happened).
    pub fn cached_prefix(&self) -> Option<&[u32]> {
        (self.discarded == 0).then_some(&self.tokens[..])
    }

    /// Context shifts so far dropped this many tokens.
    pub fn discarded(&self) -> usize {
        self.discarded
    }

    /// Positions left before the context is full.
    pub fn room(&self) -> usize {
        self.ctx() - self.len()
    }

    /// Feeds `tokens` and returns the logits after the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
        self.feed(tokens, true)?;
        Ok(self.state.logits())
    }

    /// `prefill`, leaving the logits after the last token on the device (`logits_buf`).
    pub fn prefill_on_device(&mut self, tokens: &[u32]) -> Result<()> {
        self.feed(tokens, false)
    }

    fn feed(&mut self, tokens: &[u32], read: bool) -> Result<()> {
        self.settled()?;
        if tokens.is_empty() {
            bail!("nothing to prefill");
        }
        if tokens.len() > self.room() {
            bail!(
                "{} tokens do not fit in the {} positions left of the context",
                tokens.len(),
                self.room()
            );
        }
        let batch = self.state.max_batch();
        let n_chunks = tokens.len().div_ceil(batch);
        for (i, chunk) in tokens.chunks(batch).enumerate() {
            let pos = self.len();
            let which = last_or_none(i + 1 == n_chunks);
            if read {
                self.model.forward(&mut self.state, chunk, pos, which)?;
            } else {
                self.model.forward_on_device(
                    &mut self.state,
                    Some(chunk),
                    chunk.len(),
                    pos,
                    which,
                )?;
            }
            self.tokens.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// One decode step of the token a [`crate::backend::DeviceSpec::pick`] staged, its
    /// logits left on the device: no wait for the device. Its id stays a placeholder in
    /// `tokens` until `settle_staged`.
    pub fn step_staged(&mut self) -> Result<()> {
        self.staged_forward(1, Logits::Last)
    }

    /// A verification of the `n` tokens [`crate::backend::DeviceSpec::stage_verify`]
    /// staged, every row's logits left on the device (`rows_buf`), as `feed_all` would
    /// compute them.
    pub fn verify_staged(&mut self, n: usize) -> Result<()> {
        self.staged_forward(n, Logits::All)
    }

    fn staged_forward(&mut self, n: usize, which: Logits) -> Result<()> {
        ensure!(
            self.model.backend.device_spec().is_some(),
            "this backend cannot stage tokens on the device"
        );
        ensure!(
            n <= self.room(),
            "{n} staged tokens do not fit in the context"
        );
        let pos = self.len();
        self.model
            .forward_on_device(&mut self.state, None, n, pos, which)?;
        self.tokens.resize(self.tokens.len() + n, u32::MAX);
        self.staged += n;
        Ok(())
    }

    /// Names the tokens fed by `step_staged` and `verify_staged` since the last call, in
    /// order, once the host knows them.
    pub fn settle_staged(&mut self, ids: &[u32]) -> Result<()> {
        ensure!(
            ids.len() == self.staged,
            "{} staged tokens named, {} were fed",
            ids.len(),
            self.staged
        );
        let at = self.tokens.len() - self.staged;
        self.tokens[at..].copy_from_slice(ids);
        self.staged = 0;
        Ok(())
    }

    fn settled(&self) -> Result<()> {
        ensure!(
            self.staged == 0,
            "{} tokens staged on the device were never settled",
            self.staged
        );
        Ok(())
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &'m B {
        &self.model.backend
    }

    /// The logits of the last `prefill_on_device` or `step_staged`, on the device.
    pub fn logits_buf(&self) -> &B::Buf {
        self.state.logits_buf()
    }

    /// The logits of every row of the last `verify_staged`, on the device.
    pub fn rows_buf(&self) -> Option<&B::Buf> {
        self.state.rows_buf()
    }

    /// Forgets every token after the first `len` of the history, so the next one follows
    /// them. The cache needs no clearing: later positions overwrite those slots before
    /// attention reads them. A sliding-window layer has overwritten older positions, so it
    /// can only go back as far as its slack; nor can a rollback reach into tokens a context
    /// shift dropped (except back into the kept first tokens).
    pub fn rollback(&mut self, len: usize) -> Result<()> {
        self.settled()?;
        let (cur, fed) = (self.len(), self.tokens.len());
        if len > fed {
            bail!("cannot roll back to {len} tokens: only {fed} were fed");
        }
        let keep = self.keep();
        let (pos, discarded) = if len >= keep + self.discarded {
            (len - self.discarded, self.discarded)
        } else if len <= keep {
            (len, 0)
        } else {
            bail!("cannot roll back to {len} tokens: a context shift dropped tokens after {keep}")
        };
        if let Some(l) = self
            .state
            .layouts()
            .iter()
            .find(|l| !l.can_roll_back(pos, cur))
        {
            bail!(
                "cannot roll back {} tokens: the sliding window of {} keeps only {} more",
                cur - pos,
                l.window.unwrap_or(0),
                l.capacity - l.window.unwrap_or(0)
            );
        }
        self.tokens.truncate(len);
        self.discarded = discarded;
        Ok(())
    }

    /// Sinks a context shift keeps.
    fn keep(&self) -> usize {
        self.state.settings().keep.min(self.ctx() - 1)
    }

    /// A context shift, as llama.cpp does it: drops the older half of the tokens after the
    /// first `keep` and moves the rest down, re-rotating their keys, without recomputing
    /// anything. Returns how many tokens were dropped.
    pub fn shift(&mut self) -> Result<usize> {
        self.settled()?;
        let keep = self.keep();
        let len = self.len();
        let d = (len.saturating_sub(keep)) / 2;
        ensure!(
            d > 0,
            "no room for a context shift: --keep {keep} leaves no tokens to drop from a context of {}",
            self.ctx()
        );
        self.model.shift(&mut self.state, keep, d, len)?;
        self.discarded += d;
        Ok(d)
    }

    /// Whether `shift` can drop anything: more than one token after the kept ones.
    pub fn can_shift(&self) -> bool {
        self.len().saturating_sub(self.keep()) / 2 > 0
    }

    /// Feeds one token and returns the logits for the next.
    pub fn step(&mut self, token: u32) -> Result<&[f32]> {
        self.settled()?;
        let pos = self.len();
        self.model
            .forward(&mut self.state, &[token], pos, Logits::Last)?;
        self.tokens.push(token);
        Ok(self.state.logits())
    }

    /// The cache's rows for positions `0..len()`, as [`Backend::kv_save`] writes them.
    pub fn save_kv(&self) -> Result<Vec<u8>> {
        self.settled()?;
        ensure!(
            self.discarded == 0,
            "cannot save the cache after a context shift"
        );
        let mut out = Vec::new();
        self.model
            .backend
            .kv_save(&self.state.kv, self.len(), &mut out)?;
        Ok(out)
    }

    /// Replaces everything with `tokens` and their cached rows, from `save_kv` of a session
    /// with the same model and settings.
    pub fn restore(&mut self, tokens: &[u32], kv: &[u8]) -> Result<()> {
        ensure!(
            tokens.len() <= self.ctx(),
            "the saved tokens do not fit in the context"
        );
        self.model
            .backend
            .kv_load(&mut self.state.kv, tokens.len(), kv)?;
        self.tokens.clear();
        self.tokens.extend_from_slice(tokens);
        self.discarded = 0;
        self.staged = 0;
        Ok(())
    }

    /// The logits after the last token fed by `prefill` or `step`.
    pub fn logits(&self) -> &[f32] {
        self.state.logits()
    }

    /// Makes room for `feed_all` batches of up to `rows` tokens.
    pub fn reserve_rows(&mut self, rows: usize) -> Result<()> {
        self.model.reserve_rows(&mut self.state, rows)
    }

    /// Feeds `tokens` in one batched forward pass and keeps the logits after each of them,
    /// read with `row_logits`: a draft verified in one pass. Does not touch `logits`.
    pub fn feed_all(&mut self, tokens: &[u32]) -> Result<()> {
        self.settled()?;
        if tokens.len() > self.room() {
            bail!(
                "{} tokens do not fit in the {} positions left of the context",
                tokens.len(),
                self.room()
            );
        }
        let pos = self.len();
        self.model
            .forward(&mut self.state, tokens, pos, Logits::All)?;
        self.tokens.extend_from_slice(tokens);
        Ok(())
    }

    /// The logits after token `i` of the last `feed_all`.
    pub fn row_logits(&self, i: usize) -> &[f32] {
        self.state.row_logits(i)
    }
}

fn last_or_none(last: bool) -> Logits {
    if last {
        Logits::Last
    } else {
        Logits::None
    }
}
