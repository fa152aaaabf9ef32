//! `wick gen`: generate a continuation of a prompt and stream it to stdout.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::Args;

use super::load::open_model;
use super::out::Stdout;
use super::{read_text, FailWith, Failure};
use crate::backend::cpu::{default_threads, Cpu};
use crate::backend::Backend;
use crate::model::Llama;
use crate::quant::Precision;
use crate::sample::{Sampler, SamplerParams};
use crate::session::Session;
use crate::tokenizer::{Tokenizer, Utf8Stream};

#[derive(Args)]
pub struct GenArgs {
    /// The GGUF model (default: the embedded stories260K).
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// The prompt. Read from stdin when absent or "-".
    #[arg(short = 'p', long)]
    prompt: Option<String>,
    /// Tokens to generate; -1 means until end of generation or a full context.
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx", visible_alias = "ctx-size")]
    ctx: Option<usize>,
    /// Temperature; 0 means greedy.
    #[arg(long, default_value_t = 0.8)]
    temp: f32,
    /// Keep only the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the most likely tokens up to this cumulative probability (1.0 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0 = off).
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalize tokens seen in the last --repeat-last-n tokens (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    #[arg(long, default_value_t = 64)]
    repeat_last_n: usize,
    /// Random seed, for reproducible sampling (default: a fresh one each run).
    #[arg(short = 's', long)]
    seed: Option<u64>,
    /// Turn the text of special tokens in the prompt (such as <|im_start|>) into those tokens.
    #[arg(long)]
    special: bool,
    /// Print timings to stderr: load, time to first token, prefill and decode speed.
    #[arg(long)]
    stats: bool,
    /// Threads (default: the number of physical cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Keep activations in f32 in matrix products instead of rounding them to 8 bits:
    /// slower, and the same math as an exact dequantized reference.
    #[arg(long)]
    exact: bool,
    /// Run the whole model on the NVIDIA GPU (CUDA builds only).
    #[arg(long)]
    gpu: bool,
}

pub fn run(a: GenArgs) -> Result<(), Failure> {
    let prompt = read_text(a.prompt.clone())?;
    let t_start = Instant::now();
    let (file, _name) = open_model(a.model.as_deref())?;
    let tok = Tokenizer::from_gguf(&file).file()?;
    if a.gpu {
        #[cfg(feature = "cuda")]
        {
            let gpu = crate::backend::cuda::Cuda::new(0).file()?;
            let model = Llama::load(&file, gpu).file()?;
            return generate(&a, &model, &tok, &prompt, t_start);
        }
        #[cfg(not(feature = "cuda"))]
        return Err(super::no_cuda());
    }
    let threads = a.threads.unwrap_or_else(default_threads).max(1);
    let precision = if a.exact {
        Precision::Exact
    } else {
        Precision::Fast
    };
    let model = Llama::load(&file, Cpu::new(threads, precision)).file()?;
    generate(&a, &model, &tok, &prompt, t_start)
}

/// Generation proper, the same on every backend.
fn generate<'a, B: Backend<'a>>(
    a: &GenArgs,
    model: &Llama<'a, B>,
    tok: &Tokenizer,
    prompt: &str,
    t_start: Instant,
) -> Result<(), Failure> {
    let ctx = a.ctx.unwrap_or(model.config.train_ctx.min(4096));
    if ctx == 0 {
        return Err(Failure::Usage(anyhow!("--ctx must be at least 1")));
    }
    let mut tokens = tok.encode(prompt, true, a.special).usage()?;
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
    let mut params = SamplerParams {
        temp: a.temp,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repeat_penalty: a.repeat_penalty,
        repeat_last_n: a.repeat_last_n,
        ..SamplerParams::default()
    };
    if let Some(s) = a.seed {
        params.seed = s;
    }
    let mut sampler = Sampler::new(params, model.config.vocab_size);
    let mut session = Session::new(model, ctx).generation()?;
    let t_load = t_start.elapsed();

    let mut out = Stdout::new();
    let mut text = Utf8Stream::new();
    let mut piece = String::new();
    let limit = if a.n_predict < 0 {
        usize::MAX
    } else {
        a.n_predict as usize
    };

    let t_prefill = Instant::now();
    let mut logits = session.prefill(&tokens).generation()?.to_vec();
    let prefill_time = t_prefill.elapsed();
    let mut emitted = Vec::<Instant>::new();
    let mut decode_time = Duration::ZERO;
    let mut n_generated = 0usize;
    let mut context_full = false;
    let mut prev = tokens.last().copied();

    while n_generated < limit {
        let next = sampler.sample(&logits, session.tokens());
        if tok.is_eog(next) {
            break;
        }
        n_generated += 1;
        piece.clear();
        text.push(tok.token_bytes_after(prev, next), &mut piece);
        out.write(&piece).generation()?;
        emitted.push(Instant::now());
        prev = Some(next);
        if out.closed() || n_generated == limit {
            break;
        }
        if session.room() == 0 {
            context_full = true;
            break;
        }
        let t = Instant::now();
        let l = session.step(next).generation()?;
        logits.copy_from_slice(l);
        decode_time += t.elapsed();
    }
    piece.clear();
    text.finish(&mut piece);
    if std::io::stdout().is_terminal() {
        piece.push('\n');
    }
    out.write(&piece).generation()?;
    if context_full {
        eprintln!("wick: stopped: the context of {ctx} tokens is full (raise --ctx)");
    }

    if a.stats {
        print_stats(&Stats {
            load: t_load,
            prompt_tokens: tokens.len(),
            prefill: prefill_time,
            ttft: emitted.first().map(|t| *t - t_prefill),
            decode_steps: n_generated.saturating_sub(1),
            decode: decode_time,
            emitted: &emitted,
            kv_bytes: model.config.kv_bytes(ctx),
        });
    }
    Ok(())
}

struct Stats<'a> {
    load: Duration,
    prompt_tokens: usize,
    prefill: Duration,
    ttft: Option<Duration>,
    decode_steps: usize,
    decode: Duration,
    emitted: &'a [Instant],
    kv_bytes: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn per_sec(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
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
    eprintln!(
        "prefill: {} tokens in {:.1} ms, {:.1} tok/s; time to first token {:.1} ms",
        s.prompt_tokens,
        ms(s.prefill),
        per_sec(s.prompt_tokens, s.prefill),
        s.ttft.map(ms).unwrap_or(0.0)
    );
    eprintln!(
        "decode:  {} tokens in {:.1} ms, {:.1} tok/s; inter-token latency p50 {:.2} ms, p99 {:.2} ms",
        s.decode_steps,
        ms(s.decode),
        per_sec(s.decode_steps, s.decode),
        pct(0.5),
        pct(0.99)
    );
    eprintln!("kv cache: {:.1} MiB", s.kv_bytes as f64 / (1 << 20) as f64);
}
