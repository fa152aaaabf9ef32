//! What `gen` and `chat` share: the model and sampling options, loading the model on the
//! chosen backend, formatting messages with the chat template, and prefill with progress.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, ValueEnum};

use super::log::Log;
use super::{FailWith, Failure};
use crate::backend::cpu::{default_threads, Cpu};
use crate::backend::Backend;
use crate::chat::{self, ChatTemplate, Message, SelectError};
use crate::gguf::GgufFile;
use crate::kv::{check_kv_dim, KvSettings, KvType};
use crate::model::{Config, Llama};
use crate::quant::Precision;
use crate::sample::{Sampler, SamplerParams};
use crate::session::Session;
use crate::spec::{check_vocab, Drafter, SpecParams};
use crate::tokenizer::Tokenizer;

/// Prompts longer than this get a progress bar for their prefill.
const PREFILL_BAR_TOKENS: usize = 1000;

#[derive(Args)]
pub struct ModelArgs {
    /// The GGUF model (default: the embedded stories260K).
    #[arg(short = 'm', long = "model")]
    pub model: Option<PathBuf>,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx", visible_alias = "ctx-size")]
    ctx: Option<usize>,
    /// Threads (default: the number of physical cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Keep activations in f32 in matrix products instead of rounding them to 8 bits:
    /// slower, and the same math as an exact dequantized reference.
    #[arg(long)]
    pub exact: bool,
    /// Run the whole model on the NVIDIA GPU (CUDA builds only).
    #[arg(long)]
    pub gpu: bool,
}

impl ModelArgs {
    /// The context size for a model: `--ctx`, else its training context capped at 4096.
    pub fn ctx(&self, c: &Config, log: &Log) -> Result<usize, Failure> {
        let n = self.ctx.unwrap_or(c.train_ctx.min(4096));
        if n == 0 {
            return Err(Failure::Usage(anyhow!("--ctx must be at least 1")));
        }
        log.info(format_args!("context: {n} tokens"));
        Ok(n)
    }
}

#[derive(Args)]
pub struct SamplingArgs {
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
}

impl SamplingArgs {
    pub fn sampler(&self, vocab_size: usize) -> Sampler {
        let mut params = SamplerParams {
            temp: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            ..SamplerParams::default()
        };
        if let Some(s) = self.seed {
            params.seed = s;
        }
        Sampler::new(params, vocab_size)
    }

    /// The sampler of a draft model: the same settings, its own stream of random numbers
    /// from the same seed.
    pub fn draft_sampler(&self, vocab_size: usize) -> Sampler {
        let mut params = self.sampler(vocab_size).params().clone();
        params.seed ^= 0x5eed_d4af;
        Sampler::new(params, vocab_size)
    }
}

/// How the KV cache stores keys and values, and what happens when the context fills up.
#[derive(Args)]
pub struct KvArgs {
    /// How keys and values are stored: f32, f16, q8_0 (8-bit blocks, 34 bytes per 32
    /// values, keys Hadamard-rotated; needs the model's KV rows to be a multiple of 32
    /// values) or fp8 (e4m3, one byte per value and a 4-byte scale per row; on the GPU, rows
    /// a multiple of 4 values).
    #[arg(long, value_name = "TYPE", default_value = "f16")]
    kv_type: String,
    /// Tokens from the start of the context that a context shift keeps (attention sinks).
    #[arg(long, value_name = "N", default_value_t = 4)]
    keep: usize,
    /// Stop when the context is full instead of shifting it (a notice on stderr, stop reason
    /// "context" in --json, exit status 0). By default, when the context
    /// fills up, the first --keep tokens stay and the older half of the rest is dropped;
    /// the remaining keys are re-rotated to their new positions (nothing is recomputed),
    /// and generation goes on, as llama.cpp's context shift does.
    #[arg(long)]
    pub no_context_shift: bool,
    /// Give every layer a sliding attention window of W tokens, overriding the model's
    /// (for experiments and tests).
    #[arg(long, value_name = "W")]
    window: Option<usize>,
}

impl KvArgs {
    /// The cache settings for a context of `ctx` tokens, checked against the model.
    pub fn settings(&self, ctx: usize, c: &Config) -> Result<KvSettings, Failure> {
        let settings = KvSettings {
            ctx,
            keep: self.keep,
            ty: KvType::parse(&self.kv_type).usage()?,
            window: self.window.filter(|&w| w > 0),
        };
        check_kv_dim(settings.ty, c.kv_dim()).usage()?;
        Ok(settings)
    }

    /// Whether a full context shifts rather than ending the text.
    pub fn shift(&self) -> bool {
        !self.no_context_shift
    }
}

/// Speculative decoding: where drafts come from and how long they get.
#[derive(Args)]
pub struct SpecArgs {
    /// Speculative decoding: a small model with the same vocabulary drafts tokens that the
    /// model verifies in one batched pass. The output is the model's own (the same tokens
    /// when greedy, the same distribution when sampling), only faster when drafts are good.
    /// With --gpu, speculation drafts, verifies and judges on the GPU with one wait per
    /// verification, greedy or sampled (sampled needs no repeat penalty and a top-k of at
    /// most 1024, else it judges on the host).
    #[arg(long, value_name = "FILE", conflicts_with = "draft")]
    pub draft_model: Option<PathBuf>,
    /// Speculative decoding without a draft model: `ngram` drafts the continuation of the
    /// last earlier occurrence of the latest tokens (prompt lookup; good for summaries,
    /// edits and quotes).
    #[arg(long, value_name = "KIND")]
    draft: Option<DraftKind>,
    /// Most tokens drafted per verification. The lookahead K adapts: +2 after a draft
    /// accepted whole (unless the measured cost of the longer draft, at the running
    /// acceptance rate, promises fewer tokens per second), -1 after a rejection, within
    /// [max(--draft-min, 1), --draft-max].
    #[arg(long, default_value_t = 16)]
    draft_max: usize,
    /// Fewest tokens drafted before --draft-p-min may stop a draft. 0 also lets speculation
    /// turn itself off as soon as it is slower per token than plain decoding (measured;
    /// then sampled text varies with timings). The first 32 tokens are plain steps; it
    /// probes with a one-token draft (greedy, with a draft model: compared with the plain
    /// step's own token, and only agreement starts verified drafts), and again after 16 to
    /// 1024 plain tokens: as many as make the time it lost 1 % of plain decoding's, and at
    /// least twice the last back-off after a probe that did not pay.
    #[arg(long, default_value_t = 0)]
    draft_min: usize,
    /// Stop drafting when the drafter's most likely token is less likely than this. (On the
    /// GPU the draft runs to K and proposals from the first unsure one on are ignored.)
    #[arg(long, default_value_t = 0.75)]
    draft_p_min: f32,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DraftKind {
    /// Prompt lookup: no draft model.
    Ngram,
}

impl SpecArgs {
    /// Opens `--draft-model`, refusing one whose vocabulary differs from `file`'s.
    pub fn open_draft(&self, file: &GgufFile) -> Result<Option<GgufFile>, Failure> {
        let Some(p) = &self.draft_model else {
            return Ok(None);
        };
        let (f, _) = super::load::open_model(Some(p))?;
        check_vocab(file, &f).file()?;
        Ok(Some(f))
    }

    pub fn params(&self) -> SpecParams {
        SpecParams {
            draft_max: self.draft_max,
            draft_min: self.draft_min,
            p_min: self.draft_p_min,
        }
    }

    /// The drafter for `model`: the loaded draft model with a session of the model's cache
    /// settings, or prompt lookup; `None` without speculation.
    pub fn drafter<'m, 'a, B: Backend<'a>>(
        &self,
        model: &Llama<'a, B>,
        draft: Option<&'m Llama<'a, B>>,
        settings: &KvSettings,
        sampling: &SamplingArgs,
    ) -> Result<Option<Drafter<'m, 'a, B>>, Failure> {
        let vocab = model.config.vocab_size;
        Ok(match (draft, self.draft) {
            (Some(d), _) => {
                if d.config.vocab_size != vocab {
                    return Err(Failure::File(anyhow!(
                        "the draft model has {} logits, the model {vocab}: they need one vocabulary",
                        d.config.vocab_size
                    )));
                }
                check_kv_dim(settings.ty, d.config.kv_dim()).usage()?;
                Some(Drafter::Model {
                    session: Session::with_settings(d, settings).generation()?,
                    // Its own stream of random numbers, from the same seed.
                    sampler: sampling.draft_sampler(vocab),
                })
            }
            (None, Some(DraftKind::Ngram)) => Some(Drafter::Ngram),
            (None, None) => None,
        })
    }
}

/// Work to do with a loaded model, whichever backend it runs on.
pub trait Job {
    /// `draft` is the draft model for speculative decoding, on the same backend.
    fn run<'a, B: Backend<'a>>(
        self,
        model: &Llama<'a, B>,
        draft: Option<&Llama<'a, B>>,
    ) -> Result<(), Failure>;
}

/// Loads the model from `file` on the backend `args` chooses, and runs `job` with it.
pub fn with_model<'f>(
    args: &ModelArgs,
    log: &Log,
    file: &'f GgufFile,
    draft: Option<&'f GgufFile>,
    job: impl Job,
) -> Result<(), Failure> {
    let precision = if args.exact {
        Precision::Exact
    } else {
        Precision::Fast
    };
    if args.gpu {
        #[cfg(feature = "cuda")]
        {
            let gpu = crate::backend::cuda::Cuda::new(0)
                .file()?
                .with_precision(precision);
            log.info(format_args!(
                "backend: CUDA on {} ({:.1} GiB)",
                gpu.name,
                gpu.total_mem as f64 / (1u64 << 30) as f64
            ));
            let model = load(file, &gpu, log, "uploading to the GPU")?;
            let draft = draft
                .map(|f| load(f, &gpu, log, "uploading the draft"))
                .transpose()?;
            return job.run(&model, draft.as_ref());
        }
        #[cfg(not(feature = "cuda"))]
        return Err(super::no_cuda());
    }
    let threads = args.threads.unwrap_or_else(default_threads).max(1);
    log.info(format_args!(
        "backend: CPU, {threads} threads, {} activations",
        if args.exact { "f32" } else { "8-bit" }
    ));
    // One backend for both models: one thread pool, not two competing for the cores.
    let cpu = Cpu::new(threads, precision);
    let model = load(file, &cpu, log, "loading weights")?;
    let draft = draft
        .map(|f| load(f, &cpu, log, "loading the draft"))
        .transpose()?;
    job.run(&model, draft.as_ref())
}

fn load<'a, B: Backend<'a>>(
    file: &'a GgufFile,
    backend: B,
    log: &Log,
    what: &'static str,
) -> Result<Llama<'a, B>, Failure> {
    // Made on the first tensor, which brings the total.
    let bar = std::cell::OnceCell::new();
    let model = Llama::load_with_progress(file, backend, |done, total| {
        bar.get_or_init(|| log.bar(total, what))
            .set_position(done as u64);
    })
    .file()?;
    if let Some(b) = bar.get() {
        b.finish_and_clear();
    }
    let c = &model.config;
    log.info(format_args!(
        "model: {}, {} layers, dim {}, {} heads ({} KV), vocab {}, trained with {} tokens of context",
        c.arch, c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.vocab_size, c.train_ctx
    ));
    Ok(model)
}

/// Feeds `tokens` and returns the logits after the last one, with a progress bar when the
/// prompt is long enough to make the user wait.
pub fn prefill<'a, B: Backend<'a>>(
    session: &mut Session<'_, 'a, B>,
    tokens: &[u32],
    log: &Log,
) -> anyhow::Result<Vec<f32>> {
    if tokens.len() <= PREFILL_BAR_TOKENS || !log.shows_progress() {
        return Ok(session.prefill(tokens)?.to_vec());
    }
    // Whole batches per call, so chunking for the bar changes no batch boundary; the extra
    // logits computed at the end of each chunk cost one output row product per 256 tokens.
    let bar = log.bar(tokens.len(), "prefill");
    let mut logits = Vec::new();
    for chunk in tokens.chunks(4 * session.max_batch()) {
        logits = session.prefill(chunk)?.to_vec();
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(logits)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Tokens per second; 0 for no time at all.
pub fn per_sec(n: usize, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

/// Text to tokenize, and how.
pub struct Prompt {
    pub text: String,
    pub add_special: bool,
    pub parse_special: bool,
}

impl Prompt {
    pub fn tokens(&self, tok: &Tokenizer) -> Result<Vec<u32>, Failure> {
        tok.encode(&self.text, self.add_special, self.parse_special)
            .usage()
    }
}

/// A chat template with the model's BOS and EOS text, ready to format conversations.
pub struct ChatFormat {
    template: ChatTemplate,
    bos: String,
    eos: String,
}

impl ChatFormat {
    /// The template `--chat-template` names, else the model's, else chatml with a notice.
    pub fn select(
        choice: Option<&str>,
        file: &GgufFile,
        tok: &Tokenizer,
        log: &Log,
    ) -> Result<ChatFormat, Failure> {
        let (template, notice) = chat::select(choice, file).map_err(|e| match e {
            SelectError::Unknown(e) => Failure::Usage(e),
            SelectError::File(e) => Failure::File(e),
        })?;
        if let Some(n) = notice {
            log.notice(n);
        }
        log.info(format_args!("chat template: {}", template.origin()));
        Ok(ChatFormat {
            template,
            bos: tok.bos().map_or("", |b| tok.piece(b)).to_string(),
            eos: tok.eos().map_or("", |e| tok.piece(e)).to_string(),
        })
    }

    /// The prompt for the assistant's next reply to `messages`.
    pub fn prompt(&self, messages: &[Message]) -> anyhow::Result<Prompt> {
        let text = self.template.render(messages, true, &self.bos, &self.eos)?;
        // Templates that write bos_token themselves (Llama 3, Gemma, Mistral) would get a
        // second BOS from the tokenizer; llama.cpp warns about that, here it is simply not
        // added.
        let has_bos = !self.bos.is_empty() && text.starts_with(&self.bos);
        Ok(Prompt {
            text,
            add_special: !has_bos,
            // The template writes special tokens (<|im_start|>) as text.
            parse_special: true,
        })
    }
}
