//! `wick synth` and `wick quantize`: the files they write load, run, and carry the
//! quantization mix llama.cpp would give them.
//!
//! Tests marked "K-QUANTS" check the mixes that need Q6_K and friends. Until wick can
//! encode those types they check instead that the command refuses with a clear error;
//! once the K-quant kernels are in, the same tests check the full mix.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{data_dir, fetched, stories260k, wick};
use wick::backend::cpu::Cpu;
use wick::gguf::GgufFile;
use wick::model::Llama;
use wick::quant::mix::{tensor_type, FileType, ModelShape};
use wick::quant::{self, GgmlType, Precision};
use wick::session::Session;

fn tmp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wick-synth-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    let out = wick().args(args).output().unwrap();
    eprintln!(
        "wick {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(out.status.success(), "wick {} failed", args.join(" "));
    out
}

fn synth(preset: &str, ty: &str, name: &str) -> (PathBuf, Output) {
    let p = tmp_dir().join(name);
    let out = run(&[
        "synth",
        "--preset",
        preset,
        "--type",
        ty,
        "-o",
        p.to_str().unwrap(),
        "--seed",
        "7",
    ]);
    (p, out)
}

fn types(p: &Path) -> Vec<(String, GgmlType)> {
    let f = GgufFile::open(p).unwrap();
    f.tensors
        .iter()
        .map(|t| (t.name.clone(), t.ggml_type))
        .collect()
}

fn type_of(p: &Path, name: &str) -> GgmlType {
    let f = GgufFile::open(p).unwrap();
    f.tensor(name).unwrap().ggml_type
}

fn gen(model: &Path, prompt: &str, n: usize) -> String {
    let out = ok(&[
        "gen",
        "-m",
        model.to_str().unwrap(),
        "-n",
        &n.to_string(),
        "--temp",
        "0",
        "-p",
        prompt,
    ]);
    String::from_utf8(out.stdout).unwrap()
}

fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("wick: error: "), "{err}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(out.stdout.is_empty());
}

#[test]
fn test_tiny_q8_0_loads_and_runs() {
    let (p, out) = synth("test-tiny", "q8_0", "tiny-q8_0.gguf");
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "synth prints nothing on stdout");

    let info = String::from_utf8(ok(&["info", p.to_str().unwrap()]).stdout).unwrap();
    assert!(
        info.contains("2 layers, dim 256, ffn 512, 4 heads / 2 kv heads, head dim 64, vocab 32000, context 512"),
        "{info}"
    );
    for (name, ty) in types(&p) {
        let want = if name.contains("norm") {
            GgmlType::F32
        } else {
            GgmlType::Q8_0
        };
        assert_eq!(ty, want, "{name}");
    }
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.get_u64("general.file_type"), Some(7));
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    // Every tokenizer key of the vocabulary file, unchanged.
    let vocab = GgufFile::open(&fetched("vocab/ggml-vocab-llama-spm.gguf")).unwrap();
    for (k, v) in vocab
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
    {
        assert_eq!(f.get(k), Some(v), "{k}");
    }

    let text = gen(&p, "Once upon a time", 8);
    assert!(!text.is_empty(), "gen printed nothing");
}

#[test]
fn same_seed_same_file() {
    let (a, _) = synth("test-tiny", "f16", "tiny-f16-a.gguf");
    let (b, _) = synth("test-tiny", "f16", "tiny-f16-b.gguf");
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // ...whatever the thread count.
    let c = tmp_dir().join("tiny-f16-c.gguf");
    ok(&[
        "synth",
        "--preset",
        "test-tiny",
        "--type",
        "f16",
        "--seed",
        "7",
        "-t",
        "1",
        "-o",
        c.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
}

/// K-QUANTS: q4_0 puts output.weight in Q6_K.
#[test]
fn test_tiny_q4_0_mix() {
    let (p, out) = synth("test-tiny", "q4_0", "tiny-q4_0.gguf");
    if quant::kernels(GgmlType::Q6_K).is_none() {
        assert_one_line_error(&out, 1, "Q6_K");
        assert!(!p.exists(), "no file after a refusal");
        return;
    }
    assert!(out.status.success());
    assert_eq!(type_of(&p, "output.weight"), GgmlType::Q6_K);
    assert_eq!(type_of(&p, "token_embd.weight"), GgmlType::Q4_0);
    assert_eq!(type_of(&p, "blk.1.ffn_down.weight"), GgmlType::Q4_0);
    assert_eq!(type_of(&p, "blk.1.ffn_norm.weight"), GgmlType::F32);
    assert!(!gen(&p, "Hello", 8).is_empty());
}

/// K-QUANTS: q4_k_m gives attn_v and ffn_down Q6_K on the "use_more_bits" layers (of two
/// layers, only layer 1).
#[test]
fn test_tiny_q4_k_m_mix() {
    let (p, out) = synth("test-tiny", "q4_k_m", "tiny-q4_k_m.gguf");
    if quant::kernels(GgmlType::Q4_K).is_none() || quant::kernels(GgmlType::Q6_K).is_none() {
        assert_one_line_error(&out, 1, "cannot encode");
        return;
    }
    assert!(out.status.success());
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.get_u64("general.file_type"), Some(15));
    assert_eq!(type_of(&p, "blk.0.attn_v.weight"), GgmlType::Q4_K);
    assert_eq!(type_of(&p, "blk.1.attn_v.weight"), GgmlType::Q6_K);
    assert_eq!(type_of(&p, "blk.0.ffn_down.weight"), GgmlType::Q4_K);
    assert_eq!(type_of(&p, "blk.1.ffn_down.weight"), GgmlType::Q6_K);
    assert_eq!(type_of(&p, "blk.0.attn_q.weight"), GgmlType::Q4_K);
    assert_eq!(type_of(&p, "output.weight"), GgmlType::Q6_K);
    assert!(!gen(&p, "Hello", 8).is_empty());
}

/// A real preset, end to end: SmolLM2's 30 layers in q4_0 (its tied embeddings, rows of
/// 576, fall back from Q6_K to Q8_0 as in llama.cpp).
#[test]
fn smollm2_q4_0() {
    let (p, out) = synth("smollm2-135m", "q4_0", "smollm2-q4_0.gguf");
    assert!(out.status.success());
    let info = String::from_utf8(ok(&["info", p.to_str().unwrap()]).stdout).unwrap();
    assert!(
        info.contains("30 layers, dim 576, ffn 1536, 9 heads / 3 kv heads, head dim 64, vocab 49152, context 8192, tied embeddings"),
        "{info}"
    );
    assert_eq!(type_of(&p, "token_embd.weight"), GgmlType::Q8_0);
    assert_eq!(type_of(&p, "blk.29.attn_v.weight"), GgmlType::Q4_0);
    assert!(GgufFile::open(&p)
        .unwrap()
        .tensor("output.weight")
        .is_none());
    let text = gen(&p, "Once upon a time", 8);
    eprintln!("smollm2 synth q4_0 says: {text:?}");
    assert!(!text.is_empty());
}

/// Random weights must not blow up: through all 30 layers of a real shape, in f16 and in
/// q4_0, every logit is finite.
#[test]
fn logits_stay_finite() {
    let preset = wick::synth::find_preset("smollm2-135m").unwrap();
    for ftype in [FileType::F16, FileType::Q4_0] {
        let plan = wick::synth::plan(preset, ftype, Vec::new()).unwrap();
        let mut bytes = Vec::new();
        wick::synth::write(&plan, 3, 2, &mut bytes, |_| {}).unwrap();
        let f = GgufFile::from_vec(bytes).unwrap();
        let model = Llama::load(&f, Cpu::new(2, Precision::Fast)).unwrap();
        let mut s = Session::new(&model, 128).unwrap();
        let tokens: Vec<u32> = (0..100).map(|i| (i * 7919) % 49152).collect();
        let logits = s.prefill(&tokens).unwrap();
        assert_eq!(logits.len(), 49152);
        let max = logits.iter().fold(0f32, |m, &x| m.max(x.abs()));
        eprintln!("{ftype}: max |logit| {max}");
        assert!(logits.iter().all(|x| x.is_finite()), "{ftype}");
        assert!(max > 0.0 && max < 1e3, "{ftype}: max |logit| {max}");
    }
}

#[test]
fn tokenizer_problems_are_one_line_errors() {
    let p = tmp_dir().join("never.gguf");
    let out = wick()
        .env("WICK_TEST_DATA", "/nonexistent/test-data")
        .args([
            "synth",
            "--preset",
            "tinyllama-1.1b",
            "--type",
            "q8_0",
            "-o",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert_one_line_error(
        &out,
        2,
        "/nonexistent/test-data/vocab/ggml-vocab-llama-spm.gguf",
    );
    assert_one_line_error(&out, 2, "scripts/fetch-test-data.sh");

    // GPT-2's vocabulary is not TinyLlama's size: refused, not padded.
    let gpt2 = data_dir().join("vocab/ggml-vocab-gpt-2.gguf");
    let out = run(&[
        "synth",
        "--preset",
        "tinyllama-1.1b",
        "--type",
        "q8_0",
        "--vocab",
        gpt2.to_str().unwrap(),
        "-o",
        p.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, 1, "has a vocabulary of 32000");
    assert!(!p.exists());

    let out = run(&[
        "synth", "--preset", "gpt-5", "--type", "q8_0", "-o", "x.gguf",
    ]);
    assert_one_line_error(&out, 1, "unknown preset");
    let out = run(&[
        "synth",
        "--preset",
        "llama3-8b",
        "--type",
        "q4_2",
        "-o",
        "x.gguf",
    ]);
    assert_one_line_error(&out, 1, "unknown type");
}

fn quantize(input: &Path, ty: &str, name: &str) -> (PathBuf, Output) {
    let p = tmp_dir().join(name);
    let out = run(&[
        "quantize",
        input.to_str().unwrap(),
        p.to_str().unwrap(),
        "--type",
        ty,
    ]);
    (p, out)
}

#[test]
fn quantize_stories260k() {
    let src = stories260k();
    let f32_text = gen(&src, "Once upon a time", 10);
    let (q8, out) = quantize(&src, "q8_0", "stories-q8_0.gguf");
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let q8_text = gen(&q8, "Once upon a time", 10);
    eprintln!("F32:  {f32_text:?}\nQ8_0: {q8_text:?}");
    assert_eq!(q8_text, f32_text, "q8_0 greedy output differs from F32's");

    let f = GgufFile::open(&q8).unwrap();
    assert_eq!(f.get_u64("general.file_type"), Some(7));
    let src_f = GgufFile::open(&src).unwrap();
    for t in &src_f.tensors {
        let got = f.tensor(&t.name).unwrap().ggml_type;
        // Rows of 172 (ffn_down) fill no 32-block: F16.
        let want = if t.dims.len() == 1 {
            GgmlType::F32
        } else if t.dims[0] % 32 != 0 {
            GgmlType::F16
        } else {
            GgmlType::Q8_0
        };
        assert_eq!(got, want, "{}", t.name);
    }

    let (q4, out) = quantize(&src, "q4_0", "stories-q4_0.gguf");
    assert!(out.status.success());
    // Rows of 64 do not fill Q6_K's 256-blocks, so output.weight falls back to Q8_0.
    assert_eq!(type_of(&q4, "output.weight"), GgmlType::Q8_0);
    assert_eq!(type_of(&q4, "blk.0.attn_q.weight"), GgmlType::Q4_0);
    let q4_text = gen(&q4, "Once upon a time", 10);
    eprintln!("Q4_0: {q4_text:?}");
    assert!(!q4_text.is_empty());
}

/// K-QUANTS: with rows of 64, every K-quant target falls back to 32-value blocks.
#[test]
fn quantize_stories260k_k_quant_fallbacks() {
    let src = stories260k();
    let (p, out) = quantize(&src, "q4_k_m", "stories-q4_k_m.gguf");
    // The mix asks only for Q5_0 and Q8_0 here (see the rules' unit tests).
    let src_f = GgufFile::open(&src).unwrap();
    let shape = ModelShape {
        n_layers: 5,
        n_gqa: 2,
        has_output: src_f.tensor("output.weight").is_some(),
    };
    let needed: Vec<GgmlType> = src_f
        .tensors
        .iter()
        .map(|t| tensor_type(FileType::Q4_K_M, &t.name, &t.dims, t.ggml_type, &shape))
        .collect();
    if needed.iter().any(|&t| quant::kernels(t).is_none()) {
        assert_one_line_error(&out, 1, "cannot encode");
        return;
    }
    assert!(out.status.success());
    assert_eq!(type_of(&p, "blk.0.attn_q.weight"), GgmlType::Q5_0);
    assert_eq!(type_of(&p, "output.weight"), GgmlType::Q8_0);
    assert_eq!(type_of(&p, "blk.0.ffn_down.weight"), GgmlType::F16);
    assert!(!gen(&p, "Once upon a time", 10).is_empty());
}

#[test]
fn requantizing_q8_0_to_q8_0_is_lossless() {
    let (a, out) = synth("test-tiny", "q8_0", "tiny-q8_0-rt.gguf");
    assert!(out.status.success());
    let (b, out) = quantize(&a, "q8_0", "tiny-q8_0-again.gguf");
    assert!(out.status.success());
    let (fa, fb) = (GgufFile::open(&a).unwrap(), GgufFile::open(&b).unwrap());
    assert_eq!(fa.tensors.len(), fb.tensors.len());
    for t in &fa.tensors {
        let u = fb.tensor(&t.name).unwrap();
        assert_eq!(u.ggml_type, t.ggml_type);
        assert!(fa.tensor_data(t) == fb.tensor_data(u), "{} changed", t.name);
    }
    // Through F32 and back, too: dequantized Q8_0 blocks encode to the same bytes.
    let (c, out) = quantize(&a, "f32", "tiny-f32.gguf");
    assert!(out.status.success());
    let (d, out) = quantize(&c, "q8_0", "tiny-q8_0-via-f32.gguf");
    assert!(out.status.success());
    let fd = GgufFile::open(&d).unwrap();
    for t in fa.tensors.iter().filter(|t| t.ggml_type == GgmlType::Q8_0) {
        let u = fd.tensor(&t.name).unwrap();
        assert!(fa.tensor_data(t) == fd.tensor_data(u), "{} changed", t.name);
    }
}

#[test]
fn quantize_errors() {
    let out = run(&[
        "quantize",
        "/nonexistent/in.gguf",
        "/tmp/out.gguf",
        "--type",
        "q8_0",
    ]);
    assert_one_line_error(&out, 2, "/nonexistent/in.gguf");
    let out = run(&[
        "quantize",
        stories260k().to_str().unwrap(),
        "/tmp/out.gguf",
        "--type",
        "q9_0",
    ]);
    assert_one_line_error(&out, 1, "unknown type");
}
