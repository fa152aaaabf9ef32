//! One conversation on one model, and the assistant's turns in it.
//!
//! Each turn renders the whole conversation through the template and tokenizes it. The
//! tokens already in the session that match its start stay in the KV cache; only the rest
//! is prefilled, so a turn costs its new tokens, not the whole conversation again.
//!
//! When a reply fills the context, the context shifts (`Session::shift`: the first --keep
//! tokens stay, the older half of the rest goes) and the reply goes on, unless
//! --no-context-shift. After a shift the cache no longer holds the whole conversation, and
//! the next turn keeps going with the shifted cache: the session rolls back to the tokens
//! its history shares with the rendered conversation (a rollback counts tokens of the
//! history, whatever was dropped) and only the new turn's tokens are fed, shifting again
//! first if they do not fit. So a conversation can run on past the context, remembering
//! its start and its latest turns. When the conversation changed before the dropped
//! tokens (/reset, /system, /load), no rollback can reach there: the turn starts over
//! from an empty cache, and then has to fit in the context.
//!
//! With speculative decoding, the model's session is handled the same way, and the draft
//! model's session catches up with it at the start of each reply (`Speculator::resume`).

use std::time::{Duration, Instant};

use anyhow::anyhow;

use crate::backend::Backend;
use crate::chat::Message;
use crate::cli::engine::{prefill, ChatFormat, Prompt};
use crate::cli::log::Log;
use crate::cli::out::Stdout;
use crate::cli::{FailWith, Failure};
use crate::kv::KvSettings;
use crate::model::Llama;
use crate::sample::Sampler;
use crate::session::Session;
use crate::spec::{Decoder, Drafter, Plain, SpecParams, SpecStats, Speculator};
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

/// Where a reply's tokens come from: the model alone, or speculative decoding.
// One per chat, so the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Engine<'m, 'a, B: Backend<'a>> {
    Plain(Plain<'m, 'a, B>),
    Spec(Speculator<'m, 'a, B>),
}

impl<'m, 'a, B: Backend<'a>> Engine<'m, 'a, B> {
    fn session(&self) -> &Session<'m, 'a, B> {
        match self {
            Engine::Plain(p) => p.session(),
            Engine::Spec(s) => s.target(),
        }
    }

    fn session_mut(&mut self) -> &mut Session<'m, 'a, B> {
        match self {
            Engine::Plain(p) => p.session_mut(),
            Engine::Spec(s) => s.target_mut(),
        }
    }

    fn set_session(&mut self, session: Session<'m, 'a, B>) -> anyhow::Result<()> {
        match self {
            Engine::Plain(p) => *p.session_mut() = session,
            Engine::Spec(s) => s.set_target(session)?,
        }
        Ok(())
    }

    /// Starts a reply after the session's last prefill.
    fn resume(&mut self) -> anyhow::Result<()> {
        match self {
            Engine::Plain(p) => {
                p.resume();
                Ok(())
            }
            Engine::Spec(s) => s.resume(),
        }
    }

    fn shifts(&self) -> usize {
        match self {
            Engine::Plain(p) => p.shifts(),
            Engine::Spec(s) => s.shifts(),
        }
    }

    fn decoder(&mut self) -> &mut dyn Decoder {
        match self {
            Engine::Plain(p) => p,
            Engine::Spec(s) => s,
        }
    }
}

/// How a chat's cache works: its settings, whether it shifts, and speculation.
pub struct ChatSetup<'m, 'a, B: Backend<'a>> {
    pub settings: KvSettings,
    pub shift: bool,
    pub sampler: Sampler,
    /// A drafter and its lookahead, for speculative decoding.
    pub spec: Option<(Drafter<'m, 'a, B>, SpecParams)>,
}

pub struct Chat<'m, 'a, B: Backend<'a>> {
    model: &'m Llama<'a, B>,
    settings: KvSettings,
    shift: bool,
    engine: Engine<'m, 'a, B>,
    /// Context shifts made to fit a new turn (replies count theirs in the engine).
    prompt_shifts: usize,
    tok: &'m Tokenizer,
    format: &'m ChatFormat,
    log: &'m Log,
    /// Most tokens per reply.
    limit: usize,
    pub messages: Vec<Message>,
    pub last: Option<TurnStats>,
    /// The conversation through the last reply, as text and as the tokens the model was
    /// fed and generated (see `conversation_tokens`).
    fed: Option<(String, Vec<u32>)>,
}

impl<'m, 'a, B: Backend<'a>> Chat<'m, 'a, B> {
    pub fn new(
        model: &'m Llama<'a, B>,
        setup: ChatSetup<'m, 'a, B>,
        tok: &'m Tokenizer,
        format: &'m ChatFormat,
        log: &'m Log,
        limit: usize,
    ) -> Result<Self, Failure> {
        let ChatSetup {
            settings,
            shift,
            sampler,
            spec,
        } = setup;
        let session = Session::with_settings(model, &settings).generation()?;
        let engine = match spec {
            None => Engine::Plain(Plain::new(session, sampler).with_options(Vec::new(), shift)),
            Some((drafter, params)) => {
                let vocab = model.config.vocab_size;
                Engine::Spec(
                    Speculator::new(session, sampler, drafter, params, vocab)
                        .usage()?
                        .with_shift(shift),
                )
            }
        };
        Ok(Chat {
            model,
            settings,
            shift,
            engine,
            prompt_shifts: 0,
            tok,
            format,
            log,
            limit,
            messages: Vec::new(),
            last: None,
            fed: None,
        })
    }

    pub fn ctx(&self) -> usize {
        self.engine.session().ctx()
    }

    /// Positions of the cache in use now.
    pub fn used(&self) -> usize {
        self.engine.session().len()
    }

    /// Context shifts so far, over all turns.
    pub fn shifts(&self) -> usize {
        self.prompt_shifts + self.engine.shifts()
    }

    /// Generates the assistant's reply to the conversation, writing it to `out` as it comes,
    /// and adds it to the conversation (a reply cut short too). `stop` is polled before each
    /// token. A conversation that does not fit or a template that rejects it is a usage
    /// failure, and leaves the conversation as it was.
    pub fn reply(&mut self, out: &mut Stdout, stop: &dyn Fn() -> bool) -> Result<Ended, Failure> {
        let prompt = self.format.prompt(&self.messages).usage()?;
        let tokens = self.conversation_tokens(&prompt)?;
        let reused = self.rewind(&tokens)?;
        let t = Instant::now();
        prefill(self.engine.session_mut(), &tokens[reused..], self.log).generation()?;
        self.engine.resume().generation()?;
        let prefill_time = t.elapsed();

        let mut text = String::new();
        let mut utf8 = Utf8Stream::new();
        let mut piece = String::new();
        let mut prev = tokens.last().copied();
        let mut generated = 0;
        let mut ids = Vec::new();
        let mut decode = Duration::ZERO;
        let ended = loop {
            if stop() {
                break Ended::Interrupted;
            }
            let t = Instant::now();
            let Some(next) = self.engine.decoder().next().generation()? else {
                break Ended::Context;
            };
            if generated > 0 {
                // The first token comes from the prompt's logits; decoding starts after it.
                decode += t.elapsed();
            }
            if self.tok.is_eog(next) {
                break Ended::Eos;
            }
            generated += 1;
            ids.push(next);
            piece.clear();
            utf8.push(self.tok.token_bytes_after(prev, next), &mut piece);
            out.write(&piece).generation()?;
            text.push_str(&piece);
            prev = Some(next);
            if generated >= self.limit || out.closed() {
                break Ended::Length;
            }
        };
        piece.clear();
        utf8.finish(&mut piece);
        out.write(&piece).generation()?;
        text.push_str(&piece);
        self.messages.push(Message::new("assistant", &text));
        let mut fed = tokens.clone();
        fed.extend(ids);
        self.fed = Some((prompt.text + &text, fed));
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

    /// The conversation as tokens: those of the last turn as they were fed and generated,
    /// then the rest of the text on its own, where the text still starts with that turn's.
    /// Tokenizing a reply again need not give back the tokens the model generated (a text
    /// has several tokenizations), and the cache would be thrown away from the first that
    /// differs: past a context shift, down to the sinks.
    fn conversation_tokens(&self, prompt: &Prompt) -> Result<Vec<u32>, Failure> {
        if let Some((text, tokens)) = &self.fed {
            if let Some(rest) = prompt.text.strip_prefix(text.as_str()) {
                let mut all = tokens.clone();
                all.extend(self.tok.encode(rest, false, prompt.parse_special).usage()?);
                return Ok(all);
            }
        }
        prompt.tokens(self.tok)
    }

    /// Rolls the session back to the tokens its history shares with the conversation
    /// `tokens`, and makes room for the rest (shifting the context if it may). Returns how
    /// many of `tokens` the cache keeps.
    fn rewind(&mut self, tokens: &[u32]) -> Result<usize, Failure> {
        let ctx = self.ctx();
        let session = self.engine.session_mut();
        // At least the last token is fed again, for the logits that start the reply.
        let mut reused = common_prefix(session.tokens(), tokens).min(tokens.len().max(1) - 1);
        if session.rollback(reused).is_err() {
            // The conversation changed inside tokens a shift dropped: start over.
            reused = 0;
            if session.rollback(0).is_err() {
                // A sliding window has overwritten the first positions: a fresh cache.
                let fresh = Session::with_settings(self.model, &self.settings).generation()?;
                self.engine.set_session(fresh).generation()?;
            }
        }
        // The new tokens, and a position for the reply.
        let need = tokens.len() - reused + 1;
        loop {
            let session = self.engine.session_mut();
            if !tokens.is_empty() && session.room() >= need {
                return Ok(reused);
            }
            if tokens.is_empty() || !self.shift || reused == 0 || !session.can_shift() {
                // Without shifts the whole conversation has to fit; with them, the turn.
                let (what, n) = if reused == 0 || !self.shift {
                    ("the conversation", tokens.len())
                } else {
                    ("the new turn", need - 1)
                };
                return Err(Failure::Usage(anyhow!(
                    "{what} is {n} tokens, but the context holds {ctx}: /reset it, or \
                     restart with a larger --ctx"
                )));
            }
            session.shift().generation()?;
            self.prompt_shifts += 1;
        }
    }

    /// Speculation's counts, over all turns.
    pub fn spec_stats(&self) -> Option<&SpecStats> {
        match &self.engine {
            Engine::Plain(_) => None,
            Engine::Spec(s) => Some(s.stats()),
        }
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
             context: {} of {} tokens used, {} context shifts",
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
            self.shifts(),
        ) + &self.spec_line()
    }

    fn spec_line(&self) -> String {
        let Some(s) = self.spec_stats() else {
            return String::new();
        };
        format!(
            "\nspeculation: {} drafted, {} accepted (acceptance rate {:.3}), {:.2} tokens per \
             forward of the model",
            s.drafted,
            s.accepted,
            s.acceptance(),
            s.tokens_per_target_forward()
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
