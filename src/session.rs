//! A running sequence: a model, its state, and the tokens it has seen so far.

use anyhow::{bail, Result};

use crate::backend::Backend;
use crate::model::{Llama, Logits, State, MAX_BATCH};

pub struct Session<'m, 'a, B: Backend<'a>> {
    model: &'m Llama<'a, B>,
    state: State<'a, B>,
    /// Every token fed so far; `tokens.len()` is the next position.
    tokens: Vec<u32>,
}

impl<'m, 'a, B: Backend<'a>> Session<'m, 'a, B> {
    pub fn new(model: &'m Llama<'a, B>, ctx: usize) -> Result<Session<'m, 'a, B>> {
        Ok(Session {
            model,
            state: model.new_state(ctx)?,
            tokens: Vec::with_capacity(ctx),
        })
    }

    pub fn ctx(&self) -> usize {
        self.state.capacity()
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Positions left in the context.
    pub fn room(&self) -> usize {
        self.ctx() - self.tokens.len()
    }

    /// Feeds `tokens` and returns the logits after the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32]> {
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
        let n_chunks = tokens.len().div_ceil(MAX_BATCH);
        for (i, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            let pos = self.tokens.len();
            self.model
                .forward(&mut self.state, chunk, pos, last_or_none(i + 1 == n_chunks))?;
            self.tokens.extend_from_slice(chunk);
        }
        Ok(self.state.logits())
    }

    /// Forgets every token after the first `len`, so the next one is fed at position `len`.
    /// The cache needs no clearing: later positions overwrite those slots before attention
    /// reads them.
    pub fn rollback(&mut self, len: usize) -> Result<()> {
        if len > self.tokens.len() {
            bail!(
                "cannot roll back to {len} tokens: only {} were fed",
                self.tokens.len()
            );
        }
        self.tokens.truncate(len);
        Ok(())
    }

    /// Feeds one token and returns the logits for the next.
    pub fn step(&mut self, token: u32) -> Result<&[f32]> {
        let pos = self.tokens.len();
        self.model
            .forward(&mut self.state, &[token], pos, Logits::Last)?;
        self.tokens.push(token);
        Ok(self.state.logits())
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
        if tokens.len() > self.room() {
            bail!(
                "{} tokens do not fit in the {} positions left of the context",
                tokens.len(),
                self.room()
            );
        }
        let pos = self.tokens.len();
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
