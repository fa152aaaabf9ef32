//! One conversation on one model, and the assistant's turns in it.
//!
//! Each turn renders the whole conversation through the template and tokenizes it. The
//! tokens already in the session that match its start stay in the KV cache; only the rest
//! is prefilled, so a turn costs its new tokens, not the whole conversation again.

use std::time::{Duration, Instant};

use anyhow::anyhow;

use crate::backend::Backend;
use crate::chat::Message;
use crate::cli::engine::{prefill, ChatFormat};
use crate::cli::log::Log;
use crate::cli::out::Stdout;
use crate::cli::{FailWith, Failure};
use crate::model::Llama;
use crate::sample::Sampler;
use crate::session::Session;
use crate::tokenizer::{Tokenizer, Utf8Stream};

/// Why a reply ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ended {
    /// An end-of-generation token (EOS, or the template's end of turn).
    Eos,
    /// `-n` tokens, or the reader closed stdout.
    Length,
    /// Ctrl-C.
    Interrupted,
    /// The context is full.
    Context,
}

impl Ended {
    fn as_str(self) -> &'static str {
        match self {
            Ended::Eos => "end of turn",
            Ended::Length => "length limit",
            Ended::Interrupted => "Ctrl-C",
            Ended::Context => "full context",
        }
    }
}

/// What the last turn cost, for `/stats`.
pub struct TurnStats {
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were already in the cache.
    pub reused: usize,
    pub prefill: Duration,
    pub generated: usize,
    pub decode: Duration,
    pub ended: Ended,
}

impl TurnStats {
    pub fn prefilled(&self) -> usize {
        self.prompt_tokens - self.reused
    }
}

pub struct Chat<'m, 'a, B: Backend<'a>> {
    session: Session<'m, 'a, B>,
    sampler: Sampler,
    tok: &'m Tokenizer,
    format: &'m ChatFormat,
    log: &'m Log,
    /// Most tokens per reply.
    limit: usize,
    pub messages: Vec<Message>,
    pub last: Option<TurnStats>,
}

impl<'m, 'a, B: Backend<'a>> Chat<'m, 'a, B> {
    pub fn new(
        model: &'m Llama<'a, B>,
        ctx: usize,
        sampler: Sampler,
        tok: &'m Tokenizer,
        format: &'m ChatFormat,
        log: &'m Log,
        limit: usize,
    ) -> Result<Self, Failure> {
        Ok(Chat {
            session: Session::new(model, ctx).generation()?,
            sampler,
            tok,
            format,
            log,
            limit,
            messages: Vec::new(),
            last: None,
        })
    }

    pub fn ctx(&self) -> usize {
        self.session.ctx()
    }

    /// Tokens in the cache now.
    pub fn used(&self) -> usize {
        self.session.tokens().len()
    }

    /// Generates the assistant's reply to the conversation, writing it to `out` as it comes,
    /// and adds it to the conversation (a reply cut short too). `stop` is polled before each
    /// token. A conversation that does not fit or a template that rejects it is a usage
    /// failure, and leaves the conversation as it was.
    pub fn reply(&mut self, out: &mut Stdout, stop: &dyn Fn() -> bool) -> Result<Ended, Failure> {
        let prompt = self.format.prompt(&self.messages).usage()?;
        let tokens = prompt.tokens(self.tok)?;
        let ctx = self.ctx();
        if tokens.is_empty() || tokens.len() >= ctx {
            return Err(Failure::Usage(anyhow!(
                "the conversation is {} tokens, but the context holds {ctx}: /reset it, or \
                 restart with a larger --ctx",
                tokens.len()
            )));
        }
        // At least the last token is fed again, for the logits that start the reply.
        let reused = common_prefix(self.session.tokens(), &tokens).min(tokens.len() - 1);
        self.session.rollback(reused).generation()?;
        let t = Instant::now();
        let mut logits = prefill(&mut self.session, &tokens[reused..], self.log).generation()?;
        let prefill_time = t.elapsed();

        let mut text = String::new();
        let mut utf8 = Utf8Stream::new();
        let mut piece = String::new();
        let mut prev = tokens.last().copied();
        let mut generated = 0;
        let mut decode = Duration::ZERO;
        let ended = loop {
            if stop() {
                break Ended::Interrupted;
            }
            let next = self.sampler.sample(&logits, self.session.tokens());
            if self.tok.is_eog(next) {
                break Ended::Eos;
            }
            generated += 1;
            piece.clear();
            utf8.push(self.tok.token_bytes_after(prev, next), &mut piece);
            out.write(&piece).generation()?;
            text.push_str(&piece);
            prev = Some(next);
            if generated >= self.limit || out.closed() {
                break Ended::Length;
            }
            if self.session.room() == 0 {
                break Ended::Context;
            }
            let t = Instant::now();
            logits.copy_from_slice(self.session.step(next).generation()?);
            decode += t.elapsed();
        };
        piece.clear();
        utf8.finish(&mut piece);
        out.write(&piece).generation()?;
        text.push_str(&piece);
        self.messages.push(Message::new("assistant", &text));
        self.last = Some(TurnStats {
            prompt_tokens: tokens.len(),
            reused,
            prefill: prefill_time,
            generated,
            decode,
            ended,
        });
        Ok(ended)
    }

    /// The `/stats` report of the last turn.
    pub fn stats(&self) -> String {
        use crate::cli::engine::{ms, per_sec};
        let Some(s) = &self.last else {
            return "no turn yet".to_string();
        };
        let steps = s.generated.saturating_sub(1);
        format!(
            "prompt:  {} tokens: {} reused from the cache, {} prefilled in {:.1} ms ({:.1} tok/s)\n\
             reply:   {} tokens, {:.1} tok/s, ended by {}\n\
             context: {} of {} tokens used",
            s.prompt_tokens,
            s.reused,
            s.prefilled(),
            ms(s.prefill),
            per_sec(s.prefilled(), s.prefill),
            s.generated,
            per_sec(steps, s.decode),
            s.ended.as_str(),
            self.used(),
            self.ctx(),
        )
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn prefix() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2]), 2);
    }
}
