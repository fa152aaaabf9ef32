//! The model shapes `wick synth` knows, copied from the models' published configurations.

/// Where a preset's tokenizer comes from, under the test-data folder.
#[derive(Clone, Copy, Debug)]
pub enum TokenizerSource {
    /// `vocab/ggml-vocab-<family>.gguf`, one of llama.cpp's vocabulary-only files.
    Vocab(&'static str),
    /// A real model file whose `tokenizer.*` metadata is borrowed.
    Model(&'static str),
}

/// The shape of a llama-architecture model.
#[derive(Clone, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub ctx: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// No `output.weight`: the embedding table doubles as the output matrix.
    pub tied: bool,
    pub tokenizer: TokenizerSource,
    /// Left out of help and error messages: for wick's own tests.
    pub hidden: bool,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "tinyllama-1.1b",
        dim: 2048,
        n_layers: 22,
        n_heads: 32,
        n_kv_heads: 4,
        ffn: 5632,
        vocab: 32000,
        ctx: 2048,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tied: false,
        tokenizer: TokenizerSource::Vocab("llama-spm"),
        hidden: false,
    },
    Preset {
        name: "llama2-7b",
        dim: 4096,
        n_layers: 32,
        n_heads: 32,
        n_kv_heads: 32,
        ffn: 11008,
        vocab: 32000,
        ctx: 4096,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tied: false,
        tokenizer: TokenizerSource::Vocab("llama-spm"),
        hidden: false,
    },
    Preset {
        name: "llama3-8b",
        dim: 4096,
        n_layers: 32,
        n_heads: 32,
        n_kv_heads: 8,
        ffn: 14336,
        vocab: 128256,
        ctx: 8192,
        rope_theta: 500000.0,
        rms_eps: 1e-5,
        tied: false,
        tokenizer: TokenizerSource::Vocab("llama-bpe"),
        hidden: false,
    },
    // SmolLM2's tokenizer has no vocabulary-only file; the real model lends its own.
    Preset {
        name: "smollm2-135m",
        dim: 576,
        n_layers: 30,
        n_heads: 9,
        n_kv_heads: 3,
        ffn: 1536,
        vocab: 49152,
        ctx: 8192,
        rope_theta: 100000.0,
        rms_eps: 1e-5,
        tied: true,
        tokenizer: TokenizerSource::Model("SmolLM2-135M-Instruct.Q4_1.gguf"),
        hidden: false,
    },
    // Qwen2.5-0.5B's shapes, but written as a llama: the real model is architecture qwen2,
    // with biases on Q, K and V, which wick does not run. The file is for comparing speed
    // on the same shapes, not for reproducing Qwen's outputs.
    Preset {
        name: "qwen2.5-0.5b",
        dim: 896,
        n_layers: 24,
        n_heads: 14,
        n_kv_heads: 2,
        ffn: 4864,
        vocab: 151936,
        ctx: 32768,
        rope_theta: 1000000.0,
        rms_eps: 1e-6,
        tied: true,
        tokenizer: TokenizerSource::Vocab("qwen2"),
        hidden: false,
    },
    // Small enough for tests on two cores; rows of 256 so that every K-quant fits.
    Preset {
        name: "test-tiny",
        dim: 256,
        n_layers: 2,
        n_heads: 4,
        n_kv_heads: 2,
        ffn: 512,
        vocab: 32000,
        ctx: 512,
        rope_theta: 10000.0,
        rms_eps: 1e-5,
        tied: false,
        tokenizer: TokenizerSource::Vocab("llama-spm"),
        hidden: true,
    },
];
