//! `wick chat`: a conversation with an instruct model at the terminal, or one answer to
//! stdin when stdin is not a terminal (`echo question | wick chat -m M`), so that a script
//! never waits at a prompt.
//!
//! Replies go to stdout; everything else (the banner, command output, `/stats`, notices)
//! goes to stderr, as in `wick gen`.

mod input;
mod sigint;
mod transcript;
mod turn;

use std::io::IsTerminal;
use std::path::Path;

use anyhow::anyhow;
use clap::Args;

use super::engine::{with_model, ChatFormat, Job, KvArgs, ModelArgs, SamplingArgs, SpecArgs};
use super::load::open_model;
use super::log::{Log, LogArgs};
use super::out::Stdout;
use super::{read_text, FailWith, Failure};
use crate::backend::Backend;
use crate::chat::Message;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;
use input::{Input, LineReader};
use sigint::Sigint;
use turn::{Chat, ChatSetup, Ended};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Most tokens per reply; -1 means until the end of the turn (or a full context, with
    /// --no-context-shift).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// A system message to start the conversation with (/system changes it).
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// The chat template: a built-in name (chatml, llama2, llama3, mistral, phi3, gemma,
    /// zephyr) or a file of Jinja source (default: the model's own, else chatml).
    #[arg(long, value_name = "NAME|FILE")]
    chat_template: Option<String>,
    #[command(flatten)]
    kv: KvArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    spec: SpecArgs,
}

const HELP: &str = "\
/help           this list
/reset          forget the conversation (the system message stays)
/system TEXT    set the system message (/system alone removes it)
/save FILE      write the conversation to FILE as JSON
/load FILE      read a conversation saved with /save
/stats          tokens reused from the cache and prefilled in the last turn, and speeds
/exit           leave (Ctrl-D too)
End a line with \\ to continue on the next one, or put text between \"\"\" lines.
Ctrl-C stops a reply.";

pub fn run(a: ChatArgs) -> Result<(), Failure> {
    let log = Log::new(a.log);
    // Piped input is read before the model loads, so that a bad input fails fast.
    let piped = if std::io::stdin().is_terminal() {
        None
    } else {
        let text = read_text(None)?;
        if text.trim().is_empty() {
            return Err(Failure::Usage(anyhow!(
                "stdin is empty: pipe in a message, or run wick chat in a terminal"
            )));
        }
        // `echo question |` ends it with a newline, which typed turns do not have.
        Some(text.trim_end().to_string())
    };
    let (file, name) = open_model(a.model.model.as_deref())?;
    log.info(format_args!("model file: {name}"));
    let tok = Tokenizer::from_gguf(&file).file()?;
    let format = ChatFormat::select(a.chat_template.as_deref(), &file, &tok, &log)?;
    let draft_file = a.spec.open_draft(&file)?;
    let job = ChatJob {
        a: &a,
        tok: &tok,
        format: &format,
        log: &log,
        piped,
        name: &name,
    };
    with_model(&a.model, &log, &file, draft_file.as_ref(), job)
}

struct ChatJob<'r> {
    a: &'r ChatArgs,
    tok: &'r Tokenizer,
    format: &'r ChatFormat,
    log: &'r Log,
    piped: Option<String>,
    name: &'r str,
}

impl Job for ChatJob<'_> {
    fn run<'a, B: Backend<'a>>(
        self,
        model: &Llama<'a, B>,
        draft: Option<&Llama<'a, B>>,
    ) -> Result<(), Failure> {
        let a = self.a;
        let ctx = a.model.ctx(&model.config, self.log)?;
        let limit = usize::try_from(a.n_predict).unwrap_or(usize::MAX);
        let settings = a.kv.settings(ctx, &model.config)?;
        let spec = a
            .spec
            .drafter(model, draft, &settings, &a.sampling)?
            .map(|d| (d, a.spec.params()));
        let setup = ChatSetup {
            shift: a.kv.shift(),
            sampler: a.sampling.sampler(model.config.vocab_size),
            spec,
            settings,
        };
        let mut chat = Chat::new(model, setup, self.tok, self.format, self.log, limit)?;
        if let Some(s) = &a.system {
            chat.messages.push(Message::new("system", s));
        }
        match self.piped {
            Some(text) => answer(&mut chat, &text, self.log),
            None => {
                self.log.notice(format_args!(
                    "wick chat with {} ({ctx} tokens of context). /help lists commands, \
                     Ctrl-D leaves.",
                    self.name
                ));
                repl(&mut chat, self.log)
            }
        }
    }
}

/// One user turn from stdin, its answer on stdout.
fn answer<'a, B: Backend<'a>>(
    chat: &mut Chat<'_, 'a, B>,
    text: &str,
    log: &Log,
) -> Result<(), Failure> {
    chat.messages.push(Message::new("user", text));
    let mut out = Stdout::new();
    let ended = chat.reply(&mut out, &|| false)?;
    if std::io::stdout().is_terminal() {
        out.write("\n").generation()?;
    }
    if ended == Ended::Context {
        log.notice(format_args!(
            "wick: stopped: the context of {} tokens is full and context shift is off (raise \
             --ctx, or drop --no-context-shift)",
            chat.ctx()
        ));
    }
    Ok(())
}

fn repl<'a, B: Backend<'a>>(chat: &mut Chat<'_, 'a, B>, log: &Log) -> Result<(), Failure> {
    let mut reader = LineReader::new(log)
        .map_err(|e| Failure::Usage(anyhow!("cannot read the terminal: {e}")))?;
    let mut out = Stdout::new();
    loop {
        let text = match reader.read(log) {
            Ok(Input::Text(t)) => t,
            // Ctrl-C at the prompt drops the line; a fresh prompt follows.
            Ok(Input::Interrupted) => continue,
            Ok(Input::Eof) => return Ok(()),
            Err(e) => return Err(Failure::Usage(anyhow!("cannot read the terminal: {e}"))),
        };
        if text.trim().is_empty() {
            continue;
        }
        if text.starts_with('/') {
            match command(chat, &text) {
                Some(Flow::Exit) => return Ok(()),
                Some(Flow::Continue) => continue,
                None => {}
            }
        }
        chat.messages.push(Message::new("user", &text));
        let ended = {
            let sigint = Sigint::catch();
            chat.reply(&mut out, &|| sigint.fired())
        };
        match ended {
            Ok(ended) => {
                // The prompt starts on a fresh line, whatever the reply ended with.
                out.write("\n").generation()?;
                match ended {
                    Ended::Interrupted => eprintln!("[stopped]"),
                    Ended::Context => eprintln!(
                        "wick: the context of {} tokens is full and context shift is off: the \
                         reply stops here. /reset starts over; a larger --ctx holds more.",
                        chat.ctx()
                    ),
                    Ended::Eos | Ended::Length => {}
                }
            }
            // The turn could not be taken (too long, or the template refused it): the user
            // can fix it and go on.
            Err(Failure::Usage(e)) => {
                chat.messages.pop();
                eprintln!("wick: error: {}", format!("{e:#}").replace('\n', " "));
            }
            Err(f) => return Err(f),
        }
    }
}

enum Flow {
    Continue,
    Exit,
}

/// Runs a `/command`; `None` when the text is not one, and goes to the model as it is.
fn command<'a, B: Backend<'a>>(chat: &mut Chat<'_, 'a, B>, text: &str) -> Option<Flow> {
    let line = text.trim();
    let (name, arg) = match line.split_once(char::is_whitespace) {
        Some((n, rest)) => (n, rest.trim()),
        None => (line, ""),
    };
    match name {
        "/help" => eprintln!("{HELP}"),
        "/exit" | "/quit" => return Some(Flow::Exit),
        "/reset" => {
            chat.messages.retain(|m| m.role == "system");
            eprintln!("conversation cleared");
        }
        "/system" => {
            chat.messages.retain(|m| m.role != "system");
            if arg.is_empty() {
                eprintln!("system message removed");
            } else {
                chat.messages.insert(0, Message::new("system", arg));
                eprintln!("system message set");
            }
        }
        "/save" | "/load" if arg.is_empty() => eprintln!("wick: error: {name} needs a file name"),
        "/save" => match transcript::save(Path::new(arg), &chat.messages) {
            Ok(()) => eprintln!("saved {} messages to {arg}", chat.messages.len()),
            Err(e) => eprintln!("wick: error: {e:#}"),
        },
        "/load" => match transcript::load(Path::new(arg)) {
            Ok(m) => {
                eprintln!("loaded {} messages from {arg}", m.len());
                chat.messages = m;
            }
            Err(e) => eprintln!("wick: error: {e:#}"),
        },
        "/stats" => eprintln!("{}", chat.stats()),
        _ if name.len() > 1 && name[1..].chars().all(|c| c.is_ascii_alphabetic()) => {
            eprintln!("wick: unknown command {name}: /help lists them")
        }
        // "/ 2" or "/path/to": text for the model.
        _ => return None,
    }
    Some(Flow::Continue)
}
