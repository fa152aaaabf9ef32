//! `wick bench`: prompt-processing (pp) and text-generation (tg) speed, in the manner of
//! llama-bench: each test runs once to warm up, then `-r` times, and reports the mean and
//! standard deviation of tokens per second.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use super::load::open_model;
use super::out::Stdout;
use super::{FailWith, Failure};
use crate::backend::cpu::{default_threads, Cpu};
use crate::backend::{Backend, DraftCut, Verdict};
use crate::gguf::GgufFile;
use crate::model::Llama;
use crate::quant::Precision;
use crate::sample::{Sampler, SamplerParams};
use crate::session::Session;
use crate::spec::{Decoder, Plain};

#[derive(Args)]
pub struct BenchArgs {
    /// The GGUF model (default: the embedded stories260K).
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Prompt tokens for the pp test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    n_prompt: usize,
    /// Generated tokens for the tg test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    n_gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 3)]
    reps: usize,
    /// Threads (default: the number of physical cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Print one JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Run on the NVIDIA GPU (CUDA builds only).
    #[arg(long)]
    gpu: bool,
    /// Also measure the costs that decide whether speculative decoding pays: a decode step
    /// of this draft model (c = its time / the model's step), and verifying k+1 tokens in
    /// one pass (v = its time / the model's step), for each k of --verify-k. On a GPU,
    /// as speculation runs there: draft steps picked on the device back to back, and a
    /// verification judged on the device, with one wait for its verdict.
    #[arg(long, value_name = "FILE")]
    draft_model: Option<PathBuf>,
    /// Draft lengths k for the verification test.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,6,8")]
    verify_k: Vec<usize>,
}

struct Result1 {
    test: String,
    n_prompt: usize,
    n_gen: usize,
    samples: Vec<f64>,
}

pub fn run(a: BenchArgs) -> Result<(), Failure> {
    let (file, name) = open_model(a.model.as_deref())?;
    let draft_file = match &a.draft_model {
        Some(p) => Some(open_model(Some(p))?.0),
        None => None,
    };
    let threads = a.threads.unwrap_or_else(default_threads).max(1);
    if a.gpu {
        #[cfg(feature = "cuda")]
        {
            let gpu = crate::backend::cuda::Cuda::new(0).file()?;
            let device = gpu.name.clone();
            let model = Llama::load(&file, &gpu).file()?;
            let mut results = measure(&a, &model)?;
            if let Some(df) = &draft_file {
                let draft = Llama::load(df, &gpu).file()?;
                results.extend(measure_spec(&a, &model, &draft)?);
            }
            if let Some(table) = gpu.profile_report() {
                eprint!("{table}");
            }
            return report(
                &a,
                &file,
                &name,
                &format!("cuda ({device})"),
                threads,
                &results,
            );
        }
        #[cfg(not(feature = "cuda"))]
        return Err(super::no_cuda());
    }
    let cpu = Cpu::new(threads, Precision::Fast);
    let model = Llama::load(&file, &cpu).file()?;
    let mut results = measure(&a, &model)?;
    if let Some(df) = &draft_file {
        let draft = Llama::load(df, &cpu).file()?;
        results.extend(measure_spec(&a, &model, &draft)?);
    }
    report(&a, &file, &name, "cpu", threads, &results)
}

/// Speculation's costs: a draft decode step, and verifications of k+1 tokens, each as
/// tokens per second (for a verification, verifications per second), then c and v
/// relative to the model's decode step on stderr.
fn measure_spec<'a, B: Backend<'a>>(
    a: &BenchArgs,
    model: &Llama<'a, B>,
    draft: &Llama<'a, B>,
) -> Result<Vec<Result1>, Failure> {
    let n = a.n_gen.max(1);
    let reps = a.reps.max(1);
    let vocab = model.config.vocab_size.min(draft.config.vocab_size) as u64;
    let kmax = a.verify_k.iter().copied().max().unwrap_or(0);
    let tokens: Vec<u32> = (0..(n + kmax + 1) as u64)
        .map(|i| ((i * 2654435761 + 17) % vocab) as u32)
        .collect();
    // One pass of n steps (k = None) or n verifications of k+1 tokens, in tokens (or
    // verifications) per second. The model's plain steps always read their logits, as
    // plain decoding does; drafts and verifications run as the speculator runs them.
    let once = |m: &Llama<'a, B>, k: Option<usize>, draft: bool| -> Result<f64, Failure> {
        let mut s = Session::new(m, n + kmax + 1).generation()?;
        s.reserve_rows(kmax + 1).generation()?;
        let spec = m.backend.device_spec().filter(|_| draft || k.is_some());
        let mut verdict = Verdict::default();
        let cut = DraftCut {
            min: usize::MAX,
            p_min: 0.0,
        };
        if let Some(spec) = spec {
            if draft {
                // Positions 0..: the first token from the host, then the draft's own picks.
                s.prefill_on_device(&tokens[..1]).generation()?;
            } else {
                spec.set_proposals(&tokens[1..=kmax]).generation()?;
            }
        }
        let t = Instant::now();
        for i in 0..n {
            match (k, spec) {
                (None, Some(spec)) => {
                    spec.pick(s.logits_buf(), m.config.vocab_size, 0, s.len())
                        .generation()?;
                    s.step_staged().generation()?;
                }
                (None, None) => {
                    s.step(tokens[i]).generation()?;
                }
                (Some(k), Some(spec)) => {
                    spec.stage_verify(s.len(), tokens[i], k).generation()?;
                    s.verify_staged(k + 1).generation()?;
                    let rows = s.rows_buf().context("no rows reserved").generation()?;
                    spec.judge(rows, m.config.vocab_size, k, cut, &mut verdict)
                        .generation()?;
                    s.settle_staged(&tokens[i..i + k + 1]).generation()?;
                    s.rollback(i + 1).generation()?;
                }
                (Some(k), None) => {
                    // Verify k+1 tokens, then keep one, as a rejected draft does.
                    s.feed_all(&tokens[i..i + k + 1]).generation()?;
                    s.rollback(i + 1).generation()?;
                }
            }
        }
        if let Some(spec) = spec {
            spec.sync().generation()?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    };
    let ks: Vec<usize> = a
        .verify_k
        .iter()
        .copied()
        .filter(|&k| k < crate::model::MAX_BATCH)
        .collect();
    // The tests take turns within each repetition, so that a change in the machine's load
    // hits the ratios c and v less than it would hit tests run one after another.
    let (mut target, mut drafts) = (Vec::new(), Vec::new());
    let mut verify = vec![Vec::new(); ks.len()];
    for rep in 0..=reps {
        let t = once(model, None, false)?;
        let d = once(draft, None, true)?;
        let v: Vec<f64> = ks
            .iter()
            .map(|&k| once(model, Some(k), false))
            .collect::<Result<_, _>>()?;
        if rep > 0 {
            target.push(t);
            drafts.push(d);
            for (acc, x) in verify.iter_mut().zip(v) {
                acc.push(x);
            }
        }
    }
    let step = mean_sd(&target).0;
    eprintln!(
        "c (draft step / model step) = {:.3}",
        step / mean_sd(&drafts).0
    );
    let mut out = vec![
        Result1 {
            test: format!("spec tg{n}"),
            n_prompt: 0,
            n_gen: n,
            samples: target,
        },
        Result1 {
            test: format!("draft tg{n}"),
            n_prompt: 0,
            n_gen: n,
            samples: drafts,
        },
    ];
    for (&k, samples) in ks.iter().zip(verify) {
        eprintln!(
            "v (verify {} tokens / model step) = {:.3}",
            k + 1,
            step / mean_sd(&samples).0
        );
        out.push(Result1 {
            test: format!("verify{}x{n}", k + 1),
            n_prompt: 0,
            n_gen: n,
            samples,
        });
    }
    Ok(out)
}

fn measure<'a, B: Backend<'a>>(
    a: &BenchArgs,
    model: &Llama<'a, B>,
) -> Result<Vec<Result1>, Failure> {
    let vocab = model.config.vocab_size as u64;
    let reps = a.reps.max(1);
    let mut results = Vec::new();

    // Token ids drawn from a fixed sequence: the content does not change the work done.
    let tokens: Vec<u32> = (0..a.n_prompt.max(a.n_gen) as u64)
        .map(|i| ((i * 2654435761 + 17) % vocab) as u32)
        .collect();

    if a.n_prompt > 0 {
        let ctx = a.n_prompt;
        let mut samples = Vec::new();
        for rep in 0..=reps {
            let mut s = Session::new(model, ctx).generation()?;
            let t = Instant::now();
            s.prefill(&tokens[..a.n_prompt]).generation()?;
            let secs = t.elapsed().as_secs_f64();
            if rep > 0 {
                samples.push(a.n_prompt as f64 / secs);
            }
        }
        results.push(Result1 {
            test: format!("pp{}", a.n_prompt),
            n_prompt: a.n_prompt,
            n_gen: 0,
            samples,
        });
    }
    if a.n_gen > 0 {
        let ctx = a.n_gen;
        let mut samples = Vec::new();
        for rep in 0..=reps {
            let mut s = Session::new(model, ctx).generation()?;
            let t = Instant::now();
            for &tok in &tokens[..a.n_gen] {
                s.step(tok).generation()?;
            }
            let secs = t.elapsed().as_secs_f64();
            if rep > 0 {
                samples.push(a.n_gen as f64 / secs);
            }
        }
        results.push(Result1 {
            test: format!("tg{}", a.n_gen),
            n_prompt: 0,
            n_gen: a.n_gen,
            samples,
        });
        if model.backend.device_spec().is_some() {
            results.push(Result1 {
                test: format!("tg{} picked on device", a.n_gen),
                n_prompt: 0,
                n_gen: a.n_gen,
                samples: measure_device_picks(a, model, tokens[0])?,
            });
        }
    }

    Ok(results)
}

/// Generation as `wick gen` runs it on a GPU: greedy picks on the device, only their ids
/// copied back (`spec::Plain`). The tg test above copies every step's logits to the host,
/// as llama-bench's does. Tokens handed out per second, after one untimed token: each
/// needs one more forward pass done.
fn measure_device_picks<'a, B: Backend<'a>>(
    a: &BenchArgs,
    model: &Llama<'a, B>,
    first: u32,
) -> Result<Vec<f64>, Failure> {
    let greedy = SamplerParams {
        temp: 0.0,
        repeat_penalty: 1.0,
        ..SamplerParams::default()
    };
    let vocab = model.config.vocab_size;
    let mut samples = Vec::new();
    for rep in 0..=a.reps.max(1) {
        let s = Session::new(model, a.n_gen + 4).generation()?;
        let mut d = Plain::new(s, Sampler::new(greedy.clone(), vocab));
        d.prefill(&[first]).generation()?;
        d.next().generation()?;
        let t = Instant::now();
        for _ in 0..a.n_gen {
            d.next()
                .generation()?
                .context("the context filled up")
                .generation()?;
        }
        let secs = t.elapsed().as_secs_f64();
        if rep > 0 {
            samples.push(a.n_gen as f64 / secs);
        }
        // The step queued ahead is done before the next repetition's clock starts.
        if let Some(ds) = model.backend.device_spec() {
            ds.sync().generation()?;
        }
    }
    Ok(samples)
}

fn report(
    a: &BenchArgs,
    file: &GgufFile,
    name: &str,
    backend: &str,
    threads: usize,
    results: &[Result1],
) -> Result<(), Failure> {
    let ty = main_type(file);
    let size: u64 = file.tensors.iter().map(|t| t.n_bytes).sum();
    let params: u64 = file.tensors.iter().map(|t| t.n_elements()).sum();
    let mut s = String::new();
    if a.json {
        let arr: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                let (mean, sd) = mean_sd(&r.samples);
                serde_json::json!({
                    "model": name,
                    "type": ty,
                    "size_bytes": size,
                    "params": params,
                    "backend": backend,
                    "threads": threads,
                    "test": r.test,
                    "n_prompt": r.n_prompt,
                    "n_gen": r.n_gen,
                    "repetitions": r.samples.len(),
                    "tokens_per_second": mean,
                    "stddev": sd,
                    "samples": r.samples,
                })
            })
            .collect();
        s = serde_json::to_string_pretty(&arr).unwrap_or_default();
        s.push('\n');
    } else {
        let _ = writeln!(
            s,
            "| model | type | size | params | backend | threads | test | t/s |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---|---:|---:|---:|");
        for r in results {
            let (mean, sd) = mean_sd(&r.samples);
            let _ = writeln!(
                s,
                "| {name} | {ty} | {:.2} MiB | {:.2} M | {backend} | {threads} | {} | {mean:.2} ± {sd:.2} |",
                size as f64 / (1 << 20) as f64,
                params as f64 / 1e6,
                r.test
            );
        }
    }
    Stdout::new().write(&s).file()
}

/// The tensor type holding most of the weight bytes, such as Q4_0 for a "Q4_0" file.
fn main_type(f: &GgufFile) -> String {
    let mut bytes: HashMap<&str, u64> = HashMap::new();
    for t in f.tensors.iter().filter(|t| t.dims.len() >= 2) {
        *bytes.entry(t.ggml_type.name()).or_default() += t.n_bytes;
    }
    bytes
        .into_iter()
        .max_by_key(|&(_, b)| b)
        .map_or_else(|| "?".to_string(), |(t, _)| t.to_string())
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}
