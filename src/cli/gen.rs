//! `wick gen`: generate a continuation of a prompt and stream it to stdout.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::Args;

use super::engine::{
    ms, per_sec, prefill, with_model, ChatFormat, Job, KvArgs, ModelArgs, Prompt, SamplingArgs,
    SpecArgs,
};
use super::load::open_model;
use super::log::{Log, LogArgs};
use super::out::Stdout;
use super::{read_text, FailWith, Failure};
use crate::backend::Backend;
use crate::chat::Message;
use crate::gguf::GgufFile;
use crate::kv::{self, KvType};
use crate::model::Llama;
use crate::session::Session;
use crate::spec::{Decoder, Plain, SpecStats, Speculator};
use crate::tokenizer::{Tokenizer, Utf8Stream};

#[derive(Args)]
pub struct GenArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt. Read from stdin when absent or "-".
    #[arg(short = 'p', long)]
    prompt: Option<String>,
    /// Tokens to generate; -1 means until end of generation (or a full context, with
    /// --no-context-shift).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Turn the text of special tokens in the prompt (such as <|im_start|>) into those tokens.
    #[arg(long)]
    special: bool,
    /// Print timings to stderr: load, time to first token, prefill and decode speed.
    #[arg(long)]
    stats: bool,
    /// Treat the prompt as a user message and format it with the chat template.
    #[arg(long)]
    chat: bool,
    /// A system message for --chat.
    #[arg(long, value_name = "TEXT", requires = "chat")]
    system: Option<String>,
    /// The chat template for --chat: a built-in name (chatml, llama2, llama3, mistral, phi3,
    /// gemma, zephyr) or a file of Jinja source (default: the model's own, else chatml).
    #[arg(long, value_name = "NAME|FILE", requires = "chat")]
    chat_template: Option<String>,
    /// Stop when the output ends with this text, which is not printed. Repeatable.
    #[arg(long, value_name = "STR")]
    stop: Vec<String>,
    #[command(flatten)]
    kv: KvArgs,
    /// Save the prompt's KV cache to FILE after prefill; a later run whose prompt starts
    /// with the same tokens loads it and computes only the rest. A file made with another
    /// model or other cache settings is ignored with a notice.
    #[arg(long, value_name = "FILE")]
    prompt_cache: Option<PathBuf>,
    /// Keep generating past end-of-generation tokens (they are never sampled).
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object at the end (text, token counts, stop reason, timings) instead
    /// of streaming the text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    spec: SpecArgs,
}

pub fn run(a: GenArgs) -> Result<(), Failure> {
    if a.stop.iter().any(String::is_empty) {
        return Err(Failure::Usage(anyhow!("--stop needs a non-empty string")));
    }
    let prompt = prompt_text(&a.prompt)?;
    let t_start = Instant::now();
    let log = Log::new(a.log);
    let (file, name) = open_model(a.model.model.as_deref())?;
    log.info(format_args!("model file: {name}"));
    let tok = Tokenizer::from_gguf(&file).file()?;
    let prompt = if a.chat {
        chat_prompt(&a, &file, &tok, &log, &prompt)?
    } else {
        Prompt {
            text: prompt,
            add_special: true,
            parse_special: a.special,
        }
    };
    let draft_file = a.spec.open_draft(&file)?;
    let job = Gen {
        a: &a,
        tok: &tok,
        prompt: &prompt,
        log: &log,
        file: &file,
        t_start,
    };
    with_model(&a.model, &log, &file, draft_file.as_ref(), job)
}

/// Generation once the model is loaded.
#[derive(Clone, Copy)]
struct Gen<'r> {
    a: &'r GenArgs,
    tok: &'r Tokenizer,
    prompt: &'r Prompt,
    log: &'r Log,
    file: &'r GgufFile,
    t_start: Instant,
}

impl Job for Gen<'_> {
    fn run<'a, B: Backend<'a>>(
        self,
        model: &Llama<'a, B>,
        draft: Option<&Llama<'a, B>>,
    ) -> Result<(), Failure> {
        generate(&self, model, draft)
    }
}

/// The prompt text: `--prompt`, then stdin after a newline when stdin is a pipe or file
/// (`cat notes.txt | wick gen --prompt "Summarise:"`). Without `--prompt` (or with "-"), stdin
/// alone, as before.
fn prompt_text(arg: &Option<String>) -> Result<String, Failure> {
    let p = match arg {
        Some(p) if p != "-" => p.clone(),
        _ => return read_text(None),
    };
    // A terminal on stdin means nothing was piped in; reading would wait for typing.
    if std::io::stdin().is_terminal() {
        return Ok(p);
    }
    // Closed or /dev/null stdin (tests, CI, cron) reads as empty and adds nothing.
    let extra = read_text(None)?;
    if extra.is_empty() {
        Ok(p)
    } else {
        Ok(format!("{p}\n{extra}"))
    }
}

/// The chat template applied to `--system` and the prompt as the user message.
fn chat_prompt(
    a: &GenArgs,
    file: &crate::gguf::GgufFile,
    tok: &Tokenizer,
    log: &Log,
    user: &str,
) -> Result<Prompt, Failure> {
    let format = ChatFormat::select(a.chat_template.as_deref(), file, tok, log)?;
    let mut messages = Vec::new();
    if let Some(s) = &a.system {
        messages.push(Message::new("system", s));
    }
    messages.push(Message::new("user", user));
    format.prompt(&messages).usage()
}

/// Generation proper, the same on every backend.
fn generate<'a, B: Backend<'a>>(
    job: &Gen,
    model: &Llama<'a, B>,
    draft: Option<&Llama<'a, B>>,
) -> Result<(), Failure> {
    let Gen {
        a,
        file,
        tok,
        prompt,
        log,
        t_start,
    } = *job;
    let ctx = a.model.ctx(&model.config, log)?;
    let mut tokens = prompt.tokens(tok)?;
    if tokens.is_empty() {
        match tok.bos() {
            Some(b) => tokens.push(b),
            None => {
                return Err(Failure::Usage(anyhow!(
                    "the prompt is empty and the model has no BOS token to start from"
                )))
            }
        }
    }
    if tokens.len() >= ctx {
        return Err(Failure::Usage(anyhow!(
            "the prompt is {} tokens, but the context holds {ctx}: shorten it or raise --ctx",
            tokens.len()
        )));
    }
    let sampler = a.sampling.sampler(model.config.vocab_size);
    let settings = a.kv.settings(ctx, &model.config)?;
    let mut session = Session::with_settings(model, &settings).generation()?;
    let vocab = model.config.vocab_size;
    let drafter = a.spec.drafter(model, draft, &settings, &a.sampling)?;
    if drafter.is_some() && (a.prompt_cache.is_some() || a.ignore_eos) {
        return Err(Failure::Usage(anyhow!(
            "--prompt-cache and --ignore-eos do not work with speculative decoding yet"
        )));
    }
    let t_load = t_start.elapsed();

    let mut out = Output {
        stdout: Stdout::new(),
        json: a.json.then(String::new),
        stops: StopFilter::new(&a.stop),
    };
    let mut text = Utf8Stream::new();
    let mut piece = String::new();
    let limit = if a.n_predict < 0 {
        usize::MAX
    } else {
        a.n_predict as usize
    };

    let t_prefill = Instant::now();
    let mut reused = 0;
    let mut decoder: Box<dyn Decoder + '_> = if let Some(drafter) = drafter {
        let mut spec = Speculator::new(session, sampler, drafter, a.spec.params(), vocab)
            .usage()?
            .with_shift(a.kv.shift());
        spec.prefill(&tokens).generation()?;
        Box::new(spec)
    } else {
        match &a.prompt_cache {
            Some(path) => {
                let compute = match (a.model.gpu, a.model.exact) {
                    (true, _) => "cuda",
                    (false, true) => "cpu exact",
                    (false, false) => "cpu",
                };
                let stamp = kv::file::stamp(file, &settings, compute);
                reused = match reuse_prompt_cache(&mut session, path, stamp, &tokens) {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!(
                        "wick: notice: not using the prompt cache {}: {e:#}; computing the prompt",
                        path.display()
                    );
                        session = Session::with_settings(model, &settings).generation()?;
                        0
                    }
                };
                prefill(&mut session, &tokens[reused..], log).generation()?;
                if reused < tokens.len() - 1 || !path.exists() {
                    let saved = session
                        .save_kv()
                        .and_then(|rows| kv::file::save(path, stamp, session.tokens(), &rows));
                    if let Err(e) = saved {
                        eprintln!("wick: notice: the prompt cache was not saved: {e:#}");
                    }
                }
            }
            None => {
                prefill(&mut session, &tokens, log).generation()?;
            }
        }
        let mask = if a.ignore_eos {
            tok.eog_tokens().to_vec()
        } else {
            Vec::new()
        };
        Box::new(Plain::new(session, sampler).with_options(mask, a.kv.shift()))
    };
    let prefill_time = t_prefill.elapsed();
    let mut rss_first = None;
    let mut emitted = Vec::<Instant>::new();
    let mut decode_time = Duration::ZERO;
    let mut n_generated = 0usize;
    let mut prev = tokens.last().copied();
    let mut reason = StopReason::Length;

    while n_generated < limit {
        let t = Instant::now();
        let Some(next) = decoder.next().generation()? else {
            reason = StopReason::Context;
            break;
        };
        if n_generated > 0 {
            // The first token comes from the prompt's logits; decoding starts after it.
            decode_time += t.elapsed();
        }
        if tok.is_eog(next) {
            reason = StopReason::Eos;
            break;
        }
        n_generated += 1;
        piece.clear();
        text.push(tok.token_bytes_after(prev, next), &mut piece);
        let stopped = out.push(&piece).generation()?;
        emitted.push(Instant::now());
        if rss_first.is_none() && a.stats {
            rss_first = rss_bytes();
        }
        prev = Some(next);
        if stopped {
            reason = StopReason::Stop;
            break;
        }
        if out.stdout.closed() {
            break;
        }
    }
    if reason != StopReason::Stop {
        // The last bytes of an incomplete UTF-8 character, and any text held back because
        // it could have been the start of a stop string.
        piece.clear();
        text.finish(&mut piece);
        out.push(&piece).generation()?;
        out.flush().generation()?;
    }
    let decode_steps = n_generated.saturating_sub(1);
    let shifts = decoder.shifts();

    if let Some(text) = &out.json {
        // Written by hand rather than with json!, whose map sorts keys: this keeps the
        // documented order, text first.
        let obj = format!(
            "{{\"text\":{},\"prompt_tokens\":{},\"generated_tokens\":{},\"stop_reason\":\"{}\",\
             \"timings\":{{\"load_ms\":{:.3},\"prefill_ms\":{:.3},\"decode_ms\":{:.3},\
             \"prefill_tok_s\":{:.2},\"decode_tok_s\":{:.2}}}}}",
            serde_json::Value::String(text.clone()),
            tokens.len(),
            n_generated,
            reason.as_str(),
            ms(t_load),
            ms(prefill_time),
            ms(decode_time),
            per_sec(tokens.len(), prefill_time),
            per_sec(decode_steps, decode_time),
        );
        out.stdout.write(&format!("{obj}\n")).generation()?;
    } else if std::io::stdout().is_terminal() {
        out.stdout.write("\n").generation()?;
    }
    if reason == StopReason::Context {
        log.notice(format_args!(
            "wick: stopped: the context of {ctx} tokens is full and context shift is off \
             (raise --ctx, or drop --no-context-shift)"
        ));
    }

    if a.stats {
        print_stats(&Stats {
            load: t_load,
            prompt_tokens: tokens.len(),
            reused,
            prefill: prefill_time,
            ttft: emitted.first().map(|t| *t - t_prefill),
            decode_steps,
            decode: decode_time,
            emitted: &emitted,
            kv_bytes: model.config.kv_bytes(&settings),
            kv_type: settings.ty,
            ctx,
            shifts,
            rss: (rss_first, rss_bytes()),
            device_picks: (a.model.gpu && decoder.spec_stats().is_none())
                .then(|| decoder.device_picks()),
        });
        if let Some(s) = decoder.spec_stats() {
            print_spec_stats(s);
        }
    }
    Ok(())
}

/// Why generation ended, as `--json` reports it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// An end-of-generation token.
    Eos,
    /// -n tokens, or the reader closed stdout.
    Length,
    /// A --stop string.
    Stop,
    /// The context filled up.
    Context,
}

impl StopReason {
    fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::Length => "length",
            StopReason::Stop => "stop",
            StopReason::Context => "context",
        }
    }
}

/// Where generated text goes: through the stop-string filter, then to stdout as it comes,
/// or into a string for `--json`.
struct Output {
    stdout: Stdout,
    json: Option<String>,
    stops: StopFilter,
}

impl Output {
    /// Adds generated text; true when a stop string was reached (its text is dropped).
    fn push(&mut self, s: &str) -> std::io::Result<bool> {
        let (ready, stopped) = self.stops.push(s);
        self.emit(&ready)?;
        Ok(stopped)
    }

    /// Writes out the text held back as a possible start of a stop string.
    fn flush(&mut self) -> std::io::Result<()> {
        let rest = self.stops.take();
        self.emit(&rest)
    }

    fn emit(&mut self, s: &str) -> std::io::Result<()> {
        match &mut self.json {
            Some(buf) => {
                buf.push_str(s);
                Ok(())
            }
            None => self.stdout.write(s),
        }
    }
}

/// Holds back the tail of the output that could be the start of a stop string, so that a
/// stop string split over several tokens is never printed.
pub(crate) struct StopFilter {
    stops: Vec<String>,
    pending: String,
}

impl StopFilter {
    pub(crate) fn new(stops: &[String]) -> StopFilter {
        StopFilter {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds `s`; returns the text that is safe to print, and whether a stop string was
    /// found. After a stop, the returned text is everything before the stop string.
    pub(crate) fn push(&mut self, s: &str) -> (String, bool) {
        self.pending.push_str(s);
        if self.stops.is_empty() {
            return (std::mem::take(&mut self.pending), false);
        }
        // Every stop string that is complete now starts inside `pending`: text is only
        // released when no suffix of it begins a stop string. The earliest match wins.
        let hit = self
            .stops
            .iter()
            .filter_map(|st| self.pending.find(st.as_str()))
            .min();
        if let Some(at) = hit {
            self.pending.truncate(at);
            return (std::mem::take(&mut self.pending), true);
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let keep_from = self
            .pending
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.pending[i..];
                self.stops.iter().any(|st| st.starts_with(tail))
            })
            .unwrap_or(self.pending.len());
        let rest = self.pending.split_off(keep_from);
        (std::mem::replace(&mut self.pending, rest), false)
    }

    /// Everything still held back.
    pub(crate) fn take(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

struct Stats<'a> {
    load: Duration,
    prompt_tokens: usize,
    /// Prompt tokens taken from the prompt cache rather than computed.
    reused: usize,
    prefill: Duration,
    ttft: Option<Duration>,
    decode_steps: usize,
    decode: Duration,
    emitted: &'a [Instant],
    kv_bytes: usize,
    kv_type: KvType,
    ctx: usize,
    shifts: usize,
    /// Resident memory at the first token and at the end.
    rss: (Option<usize>, Option<usize>),
    /// On the GPU: whether plain decoding picked its tokens there.
    device_picks: Option<bool>,
}

fn print_stats(s: &Stats) {
    let mut gaps: Vec<Duration> = s.emitted.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort();
    let pct = |p: f64| -> f64 {
        if gaps.is_empty() {
            return 0.0;
        }
        let i = ((gaps.len() - 1) as f64 * p).round() as usize;
        ms(gaps[i])
    };
    eprintln!("load:    {:.1} ms", ms(s.load));
    let computed = s.prompt_tokens - s.reused;
    eprintln!(
        "prefill: {} tokens in {:.1} ms, {:.1} tok/s; time to first token {:.1} ms",
        computed,
        ms(s.prefill),
        per_sec(computed, s.prefill),
        s.ttft.map(ms).unwrap_or(0.0)
    );
    if s.reused > 0 {
        eprintln!("prompt cache: {} tokens reused", s.reused);
    }
    eprintln!(
        "decode:  {} tokens in {:.1} ms, {:.1} tok/s; inter-token latency p50 {:.2} ms, p99 {:.2} ms",
        s.decode_steps,
        ms(s.decode),
        per_sec(s.decode_steps, s.decode),
        pct(0.5),
        pct(0.99)
    );
    eprintln!(
        "kv cache: {:.2} MiB ({} bytes, {}, ctx {}); context shifts: {}",
        s.kv_bytes as f64 / (1 << 20) as f64,
        s.kv_bytes,
        s.kv_type.name(),
        s.ctx,
        s.shifts
    );
    match s.device_picks {
        Some(true) => eprintln!("picks:   on the GPU, each token's id copied back"),
        Some(false) => eprintln!("picks:   on the host, each token's logits copied back"),
        None => {}
    }
    if let (Some(first), Some(end)) = s.rss {
        eprintln!("memory:  rss {first} bytes at the first token, {end} bytes at the end");
    }
}

/// Resident memory of this process, from /proc (Linux only).
fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Loads the prompt cache at `path` into `session` and rolls it back to the part it shares
/// with `tokens`, leaving at least the last prompt token to compute (its logits are not
/// saved). Returns how many prompt tokens are reused (0 with no file yet).
fn reuse_prompt_cache<'a, B: Backend<'a>>(
    session: &mut Session<'_, 'a, B>,
    path: &std::path::Path,
    stamp: u64,
    tokens: &[u32],
) -> anyhow::Result<usize> {
    if !path.exists() {
        return Ok(0);
    }
    let (cached, rows) = kv::file::load(path, stamp)?;
    session.restore(&cached, &rows)?;
    let common = cached
        .iter()
        .zip(tokens)
        .take_while(|(a, b)| a == b)
        .count();
    let reuse = common.min(tokens.len() - 1);
    session.rollback(reuse)?;
    Ok(reuse)
}

fn print_spec_stats(s: &SpecStats) {
    eprintln!(
        "speculation: {} drafted, {} accepted (acceptance rate {:.3}); {:.2} accepted per \
         verification; {:.2} tokens per target forward ({} verifications, {} plain steps)",
        s.drafted,
        s.accepted,
        s.acceptance(),
        s.accepted_per_verification(),
        s.tokens_per_target_forward(),
        s.verifications,
        s.plain_steps
    );
    let per = |secs: f64, n: usize| if n == 0 { 0.0 } else { secs * 1e3 / n as f64 };
    eprintln!(
        "speculation time: draft {:.1} ms ({:.2} ms per draft forward), verify {:.1} ms ({:.2} ms \
         each), plain {:.1} ms ({:.2} ms each)",
        s.draft_secs * 1e3,
        per(s.draft_secs, s.draft_forwards),
        s.verify_secs * 1e3,
        per(s.verify_secs, s.verifications),
        s.plain_secs * 1e3,
        per(s.plain_secs, s.plain_steps)
    );
    if s.on_device {
        eprintln!(
            "speculation on the GPU: drafting is only queued, so its time is counted in verify"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::StopFilter;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut f = StopFilter::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (s, stopped) = f.push(p);
            out.push_str(&s);
            if stopped {
                return (out, true);
            }
        }
        out.push_str(&f.take());
        (out, false)
    }

    #[test]
    fn stop_split_over_pieces() {
        assert_eq!(run(&["Lily"], &["a L", "il", "y b"]), ("a ".into(), true));
        assert_eq!(run(&["Lily"], &["a Li", "m"]), ("a Lim".into(), false));
        assert_eq!(run(&["ab", "b"], &["xa", "b"]), ("x".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["é!"], &["café", "?"]), ("café?".into(), false));
    }

    #[test]
    fn held_text_is_released_once_it_cannot_match() {
        let stops = vec!["END".to_string()];
        let mut f = StopFilter::new(&stops);
        assert_eq!(f.push("xE"), ("x".to_string(), false));
        assert_eq!(f.push("N"), (String::new(), false));
        assert_eq!(f.push("x"), ("ENx".to_string(), false));
    }
}
