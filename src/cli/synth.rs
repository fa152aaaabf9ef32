//! `wick synth`: a model file with a real model's shapes, tokenizer and quantization mix,
//! and random weights, for measuring speed without downloading the real one.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::anyhow;
use clap::Args;

use super::write::{bytes_bar, mib, write_file};
use super::{FailWith, Failure};
use crate::gguf::{GgufError, GgufFile};
use crate::quant::mix::FileType;
use crate::synth::{self, TokenizerSource};

#[derive(Args)]
pub struct SynthArgs {
    /// Model shape: tinyllama-1.1b, llama2-7b, llama3-8b, smollm2-135m or qwen2.5-0.5b.
    #[arg(long)]
    preset: String,
    /// Quantization, as llama-quantize names it: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0,
    /// q5_1, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k.
    #[arg(long = "type")]
    ty: String,
    /// The GGUF file to write.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// A GGUF file to take the tokenizer from (default: the preset's file in the test data
    /// that scripts/fetch-test-data.sh downloads).
    #[arg(long)]
    vocab: Option<PathBuf>,
    /// Seed of the random weights; the same seed gives the same file.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads (default: all).
    #[arg(short = 't', long)]
    threads: Option<usize>,
}

pub fn parse_ftype(name: &str) -> Result<FileType, Failure> {
    FileType::from_name(name)
        .ok_or_else(|| {
            anyhow!(
                "unknown type {name:?} (expected one of: {})",
                FileType::names().join(", ")
            )
        })
        .usage()
}

pub fn threads(t: Option<usize>) -> usize {
    t.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

pub fn run(a: SynthArgs) -> Result<(), Failure> {
    let preset = synth::find_preset(&a.preset)
        .ok_or_else(|| {
            anyhow!(
                "unknown preset {:?} (expected one of: {})",
                a.preset,
                synth::preset_names().join(", ")
            )
        })
        .usage()?;
    let ftype = parse_ftype(&a.ty)?;
    let threads = threads(a.threads);

    let vocab_path = a
        .vocab
        .clone()
        .unwrap_or_else(|| synth::default_vocab_path(preset));
    let vocab = match GgufFile::open(&vocab_path) {
        Ok(f) => f,
        Err(GgufError::Io(..)) if a.vocab.is_none() && !vocab_path.exists() => {
            let what = match preset.tokenizer {
                TokenizerSource::Vocab(_) => "vocabulary file",
                TokenizerSource::Model(_) => "model file (its tokenizer is borrowed)",
            };
            return Err(anyhow!(
                "{what} {} is missing: run scripts/fetch-test-data.sh or pass --vocab FILE",
                vocab_path.display()
            ))
            .file();
        }
        Err(e @ GgufError::Io(..)) => return Err(e).file(),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(vocab_path.display().to_string())).file()
        }
    };
    let (tokenizer, n_tokens) = synth::read_tokenizer(&vocab)
        .map_err(|e| e.context(format!("no tokenizer in {}", vocab_path.display())))
        .file()?;
    if n_tokens != preset.vocab {
        return Err(anyhow!(
            "the tokenizer in {} has {n_tokens} tokens, but {} has a vocabulary of {}: pass a --vocab with exactly that many",
            vocab_path.display(),
            preset.name,
            preset.vocab
        ))
        .usage();
    }

    let plan = synth::plan(preset, ftype, tokenizer).usage()?;
    let total = plan.total_bytes();
    let bar = bytes_bar(total);
    let start = Instant::now();
    write_file(&a.output, |w| {
        synth::write(&plan, a.seed, threads, w, |n| bar.inc(n))
            .map_err(|e| e.context(format!("cannot write {}", a.output.display())))
            .file()
    })?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {}: {} {}, {} tensors, {} in {:.1} s",
        a.output.display(),
        preset.name,
        ftype.name().to_uppercase(),
        plan.tensors.len(),
        mib(total),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
