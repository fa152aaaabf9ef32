//! Which type each tensor of a model gets when a whole file is quantized to one "file type"
//! such as Q4_K_M: the rules of llama.cpp's quantizer (`llama_tensor_get_type` and the
//! tensor filter of `llama_model_quantize_impl` in src/llama-quant.cpp), restated for the
//! llama architecture, so that wick's files have the same mix as llama.cpp's.
//!
//! Shared by `wick synth` and `wick quantize`. Pure: no kernels are consulted, so every rule
//! can be tested whether or not wick can encode the type it picks.

use std::fmt;

use super::GgmlType;

/// A whole-file quantization target (`enum llama_ftype`, numbered as in llama.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
}

/// (file type, `llama_ftype` number, name, the type of most tensors)
const FTYPES: &[(FileType, u32, &str, GgmlType)] = &[
    (FileType::F32, 0, "f32", GgmlType::F32),
    (FileType::F16, 1, "f16", GgmlType::F16),
    (FileType::Q4_0, 2, "q4_0", GgmlType::Q4_0),
    (FileType::Q4_1, 3, "q4_1", GgmlType::Q4_1),
    (FileType::Q8_0, 7, "q8_0", GgmlType::Q8_0),
    (FileType::Q5_0, 8, "q5_0", GgmlType::Q5_0),
    (FileType::Q5_1, 9, "q5_1", GgmlType::Q5_1),
    (FileType::Q2_K, 10, "q2_k", GgmlType::Q2_K),
    (FileType::Q3_K_S, 11, "q3_k_s", GgmlType::Q3_K),
    (FileType::Q3_K_M, 12, "q3_k_m", GgmlType::Q3_K),
    (FileType::Q3_K_L, 13, "q3_k_l", GgmlType::Q3_K),
    (FileType::Q4_K_S, 14, "q4_k_s", GgmlType::Q4_K),
    (FileType::Q4_K_M, 15, "q4_k_m", GgmlType::Q4_K),
    (FileType::Q5_K_S, 16, "q5_k_s", GgmlType::Q5_K),
    (FileType::Q5_K_M, 17, "q5_k_m", GgmlType::Q5_K),
    (FileType::Q6_K, 18, "q6_k", GgmlType::Q6_K),
    (FileType::BF16, 32, "bf16", GgmlType::BF16),
];

impl FileType {
    fn row(self) -> &'static (FileType, u32, &'static str, GgmlType) {
        FTYPES
            .iter()
            .find(|r| r.0 == self)
            .expect("every FileType is in FTYPES")
    }

    /// Parses a name such as `q4_k_m` (case-insensitive). `q3_k` and `q4_k`, `q5_k` mean
    /// the `_m` variants, as in llama-quantize.
    pub fn from_name(name: &str) -> Option<FileType> {
        let n = name.to_ascii_lowercase();
        let n = match n.as_str() {
            "q3_k" | "q4_k" | "q5_k" => format!("{n}_m"),
            _ => n,
        };
        FTYPES.iter().find(|r| r.2 == n).map(|r| r.0)
    }

    /// All names `from_name` accepts, for help and error messages.
    pub fn names() -> Vec<&'static str> {
        FTYPES.iter().map(|r| r.2).collect()
    }

    pub fn name(self) -> &'static str {
        self.row().2
    }

    /// The value of `general.file_type` (`enum llama_ftype`).
    pub fn llama_ftype(self) -> u32 {
        self.row().1
    }

    /// The type of every tensor no rule singles out.
    pub fn default_type(self) -> GgmlType {
        self.row().3
    }

    /// True for the block-quantized targets, whose mixes depend on the tensor.
    pub fn is_quantized(self) -> bool {
        !matches!(self, FileType::F32 | FileType::F16 | FileType::BF16)
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the rules need to know about the model as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelShape {
    pub n_layers: usize,
    /// Query heads per KV head (1 without grouped-query attention).
    pub n_gqa: usize,
    /// False when the embedding table doubles as the output matrix (no `output.weight`).
    pub has_output: bool,
}

impl ModelShape {
    /// llama.cpp names an 80-layer llama with grouped-query attention "70B" and gives its
    /// small attn_v tensors more bits.
    fn is_70b(&self) -> bool {
        self.n_layers == 80 && self.n_gqa > 1
    }
}

/// The layer index of a `blk.N.` tensor.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// True for the tensors llama.cpp quantizes at all: 2-D (or more) weights that are not
/// norms. Everything else (norms, biases, 1-D tensors) keeps its type.
pub fn is_quantizable(name: &str, dims: &[u64]) -> bool {
    name.ends_with("weight")
        && dims.len() >= 2
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
        && !name.contains("attn_rel_b.weight")
        && name != "position_embd.weight"
        && name != "token_types.weight"
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third
/// layer between, get the bigger type in the `_M` mixes.
pub fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let (i, n) = (layer as i64, n_layers as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type tensor `name` (shape `dims`, ggml order: `dims[0]` is the row length, stored
/// now as `src`) gets in a file of type `ftype`.
pub fn tensor_type(
    ftype: FileType,
    name: &str,
    dims: &[u64],
    src: GgmlType,
    m: &ModelShape,
) -> GgmlType {
    if !is_quantizable(name, dims) {
        return src;
    }
    let default = ftype.default_type();
    if !ftype.is_quantized() {
        return default;
    }
    fallback(dims[0], mixed_type(ftype, name, dims[0], m))
}

/// `llama_tensor_get_type` before its row-length check, for the llama architecture (no
/// experts, no fused QKV in llama but its rule is kept, no imatrix, no user overrides).
fn mixed_type(ftype: FileType, name: &str, cols: u64, m: &ModelShape) -> GgmlType {
    use FileType as F;
    use GgmlType as T;
    let default = ftype.default_type();
    let layer = layer_of(name).unwrap_or(0);
    let n = m.n_layers;

    // The output matrix, or the embeddings when they double as it: Q6_K for every target
    // but Q8_0, and Q8_0 when the rows do not fill the target's blocks.
    if name == "output.weight" || (!m.has_output && name == "token_embd.weight") {
        return if !cols.is_multiple_of(default.block_len() as u64) {
            T::Q8_0
        } else if default != T::Q8_0 {
            T::Q6_K
        } else {
            default
        };
    }
    // token_embd.weight: only the IQ and TQ targets, which wick does not offer, change it.
    if name.contains("attn_v.weight") {
        let mut t = match ftype {
            F::Q2_K if m.n_gqa >= 4 => T::Q4_K,
            F::Q2_K => T::Q3_K,
            F::Q3_K_M if layer < 2 => T::Q5_K,
            F::Q3_K_M => T::Q4_K,
            F::Q3_K_L => T::Q5_K,
            F::Q4_K_M | F::Q5_K_M if use_more_bits(layer, n) => T::Q6_K,
            F::Q4_K_S if layer < 4 => T::Q5_K,
            _ => default,
        };
        // 70B shares each attn_v among 8 heads, so it is 8x smaller than attn_q: more bits
        // there cost almost nothing.
        if m.is_70b() && (t == T::Q3_K || t == T::Q4_K) {
            t = T::Q5_K;
        }
        return t;
    }
    if name.contains("ffn_down") {
        return match ftype {
            F::Q2_K => T::Q3_K,
            // llama.cpp tests `arch != FALCON || use_more_bits`: always true for llama.
            F::Q3_K_M if layer < n / 16 => T::Q5_K,
            F::Q3_K_M => T::Q4_K,
            F::Q3_K_L => T::Q5_K,
            F::Q4_K_M | F::Q5_K_M if use_more_bits(layer, n) => T::Q6_K,
            F::Q4_K_S if layer < n / 8 => T::Q5_K,
            _ => default,
        };
    }
    if name.contains("attn_output.weight") {
        return match ftype {
            F::Q2_K => T::Q3_K,
            F::Q3_K_M => T::Q4_K,
            F::Q3_K_L => T::Q5_K,
            _ => default,
        };
    }
    if name.contains("attn_qkv.weight") {
        return match ftype {
            F::Q3_K_M | F::Q3_K_L => T::Q4_K,
            F::Q4_K_M => T::Q5_K,
            F::Q5_K_M => T::Q6_K,
            _ => default,
        };
    }
    default
}

/// llama.cpp's `convert_incompatible_tensor`: a type whose blocks do not divide the row
/// length is swapped for one of about the same size with 32-value blocks, or F16.
///
/// One deliberate difference: for the 32-block types themselves llama.cpp has no fallback
/// and refuses the whole file; wick stores such a tensor in F16, llama.cpp's own last
/// resort, so that small models with odd widths (stories260K's FFN of 172) still convert.
fn fallback(cols: u64, t: GgmlType) -> GgmlType {
    use GgmlType as T;
    if cols.is_multiple_of(t.block_len() as u64) {
        return t;
    }
    let f = match t {
        T::Q2_K | T::Q3_K | T::IQ2_XXS | T::IQ2_XS | T::IQ2_S | T::IQ3_XXS | T::IQ3_S => T::IQ4_NL,
        T::IQ1_S | T::IQ1_M | T::IQ4_XS => T::IQ4_NL,
        T::TQ1_0 | T::TQ2_0 => T::Q4_0,
        T::Q4_K => T::Q5_0,
        T::Q5_K => T::Q5_1,
        T::Q6_K => T::Q8_0,
        _ => T::F16,
    };
    if !cols.is_multiple_of(f.block_len() as u64) {
        T::F16
    } else {
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgmlType as T;

    const LLAMA3_8B: ModelShape = ModelShape {
        n_layers: 32,
        n_gqa: 4,
        has_output: true,
    };
    const LLAMA2_7B: ModelShape = ModelShape {
        n_layers: 32,
        n_gqa: 1,
        has_output: true,
    };

    fn ty(f: FileType, name: &str, cols: u64, m: &ModelShape) -> GgmlType {
        tensor_type(f, name, &[cols, 1024], T::F32, m)
    }

    #[test]
    fn names_and_numbers() {
        for r in FTYPES {
            assert_eq!(FileType::from_name(r.2), Some(r.0));
            assert_eq!(FileType::from_name(&r.2.to_uppercase()), Some(r.0));
        }
        assert_eq!(FileType::from_name("q4_k"), Some(FileType::Q4_K_M));
        assert_eq!(FileType::from_name("q4_2"), None);
        // llama.h: Q4_K_M = 15, Q5_K_M = 17, Q8_0 = 7, BF16 = 32.
        assert_eq!(FileType::Q4_K_M.llama_ftype(), 15);
        assert_eq!(FileType::Q5_K_M.llama_ftype(), 17);
        assert_eq!(FileType::Q8_0.llama_ftype(), 7);
        assert_eq!(FileType::BF16.llama_ftype(), 32);
    }

    #[test]
    fn layers() {
        assert_eq!(layer_of("blk.17.attn_v.weight"), Some(17));
        assert_eq!(layer_of("output.weight"), None);
        // 32 layers: the first 4, the last 4, and 6, 9, ..., 27.
        let more: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(
            more,
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
    }

    #[test]
    fn norms_and_1d_tensors_keep_their_type() {
        for f in [FileType::Q4_0, FileType::F16, FileType::Q4_K_M] {
            let t = tensor_type(f, "blk.0.attn_norm.weight", &[4096], T::F32, &LLAMA3_8B);
            assert_eq!(t, T::F32);
            let t = tensor_type(f, "output_norm.weight", &[4096], T::F32, &LLAMA3_8B);
            assert_eq!(t, T::F32);
            // 1-D tensors keep even another type.
            let t = tensor_type(f, "output_norm.weight", &[4096], T::F16, &LLAMA3_8B);
            assert_eq!(t, T::F16);
        }
    }

    #[test]
    fn float_targets_convert_every_matrix() {
        for (f, t) in [
            (FileType::F16, T::F16),
            (FileType::BF16, T::BF16),
            (FileType::F32, T::F32),
        ] {
            for name in [
                "output.weight",
                "token_embd.weight",
                "blk.3.ffn_down.weight",
            ] {
                assert_eq!(ty(f, name, 4096, &LLAMA3_8B), t, "{f} {name}");
            }
        }
    }

    #[test]
    fn legacy_targets() {
        // Output gets Q6_K unless the target is Q8_0; everything else the default.
        for (f, t) in [
            (FileType::Q4_0, T::Q4_0),
            (FileType::Q4_1, T::Q4_1),
            (FileType::Q5_0, T::Q5_0),
            (FileType::Q5_1, T::Q5_1),
        ] {
            assert_eq!(ty(f, "output.weight", 4096, &LLAMA3_8B), T::Q6_K);
            assert_eq!(ty(f, "token_embd.weight", 4096, &LLAMA3_8B), t);
            assert_eq!(ty(f, "blk.0.attn_v.weight", 4096, &LLAMA3_8B), t);
            assert_eq!(ty(f, "blk.0.ffn_down.weight", 14336, &LLAMA3_8B), t);
        }
        let q8 = FileType::Q8_0;
        assert_eq!(ty(q8, "output.weight", 4096, &LLAMA3_8B), T::Q8_0);
        assert_eq!(ty(q8, "blk.0.ffn_down.weight", 14336, &LLAMA3_8B), T::Q8_0);
    }

    #[test]
    fn tied_embeddings_take_the_output_type() {
        let tied = ModelShape {
            n_layers: 30,
            n_gqa: 3,
            has_output: false,
        };
        assert_eq!(
            ty(FileType::Q4_0, "token_embd.weight", 4096, &tied),
            T::Q6_K
        );
        assert_eq!(
            ty(FileType::Q4_0, "token_embd.weight", 4096, &LLAMA3_8B),
            T::Q4_0
        );
        // Rows of 576 (SmolLM2) do not fill 256-blocks: Q8_0, as llama.cpp.
        assert_eq!(
            ty(FileType::Q4_K_M, "token_embd.weight", 576, &tied),
            T::Q8_0
        );
        // They fill Q4_0's 32-blocks, so the rule picks Q6_K, and its fallback is Q8_0.
        assert_eq!(ty(FileType::Q4_0, "token_embd.weight", 576, &tied), T::Q8_0);
    }

    #[test]
    fn q4_k_m() {
        let f = FileType::Q4_K_M;
        let m = &LLAMA3_8B;
        assert_eq!(ty(f, "output.weight", 4096, m), T::Q6_K);
        assert_eq!(ty(f, "token_embd.weight", 4096, m), T::Q4_K);
        for i in 0..32 {
            let more = use_more_bits(i, 32);
            let want = if more { T::Q6_K } else { T::Q4_K };
            assert_eq!(ty(f, &format!("blk.{i}.attn_v.weight"), 4096, m), want);
            assert_eq!(ty(f, &format!("blk.{i}.ffn_down.weight"), 14336, m), want);
            for other in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up"] {
                let name = format!("blk.{i}.{other}.weight");
                assert_eq!(ty(f, &name, 4096, m), T::Q4_K, "{name}");
            }
        }
    }

    #[test]
    fn q5_k_m_and_s() {
        let m = &LLAMA3_8B;
        assert_eq!(
            ty(FileType::Q5_K_M, "blk.0.attn_v.weight", 4096, m),
            T::Q6_K
        );
        assert_eq!(
            ty(FileType::Q5_K_M, "blk.4.attn_v.weight", 4096, m),
            T::Q5_K
        );
        assert_eq!(
            ty(FileType::Q5_K_M, "blk.6.ffn_down.weight", 14336, m),
            T::Q6_K
        );
        assert_eq!(
            ty(FileType::Q5_K_M, "blk.0.attn_q.weight", 4096, m),
            T::Q5_K
        );
        assert_eq!(
            ty(FileType::Q5_K_S, "blk.0.attn_v.weight", 4096, m),
            T::Q5_K
        );
        assert_eq!(ty(FileType::Q5_K_S, "output.weight", 4096, m), T::Q6_K);
        assert_eq!(ty(FileType::Q6_K, "blk.0.attn_v.weight", 4096, m), T::Q6_K);
        assert_eq!(ty(FileType::Q6_K, "output.weight", 4096, m), T::Q6_K);
    }

    #[test]
    fn q4_k_s() {
        let (f, m) = (FileType::Q4_K_S, &LLAMA3_8B);
        assert_eq!(ty(f, "blk.3.attn_v.weight", 4096, m), T::Q5_K);
        assert_eq!(ty(f, "blk.4.attn_v.weight", 4096, m), T::Q4_K);
        assert_eq!(ty(f, "blk.3.ffn_down.weight", 14336, m), T::Q5_K);
        assert_eq!(ty(f, "blk.4.ffn_down.weight", 14336, m), T::Q4_K);
    }

    #[test]
    fn q3_k() {
        let m = &LLAMA3_8B;
        let (s, mm, l) = (FileType::Q3_K_S, FileType::Q3_K_M, FileType::Q3_K_L);
        assert_eq!(ty(s, "blk.0.attn_v.weight", 4096, m), T::Q3_K);
        assert_eq!(ty(s, "blk.0.ffn_down.weight", 14336, m), T::Q3_K);
        assert_eq!(ty(s, "output.weight", 4096, m), T::Q6_K);
        assert_eq!(ty(mm, "blk.1.attn_v.weight", 4096, m), T::Q5_K);
        assert_eq!(ty(mm, "blk.2.attn_v.weight", 4096, m), T::Q4_K);
        assert_eq!(ty(mm, "blk.1.ffn_down.weight", 14336, m), T::Q5_K);
        assert_eq!(ty(mm, "blk.2.ffn_down.weight", 14336, m), T::Q4_K);
        assert_eq!(ty(mm, "blk.2.attn_output.weight", 4096, m), T::Q4_K);
        assert_eq!(ty(mm, "blk.2.attn_q.weight", 4096, m), T::Q3_K);
        assert_eq!(ty(l, "blk.9.attn_v.weight", 4096, m), T::Q5_K);
        assert_eq!(ty(l, "blk.9.ffn_down.weight", 14336, m), T::Q5_K);
        assert_eq!(ty(l, "blk.9.attn_output.weight", 4096, m), T::Q5_K);
        assert_eq!(ty(l, "blk.9.ffn_up.weight", 4096, m), T::Q3_K);
    }

    #[test]
    fn q2_k() {
        let f = FileType::Q2_K;
        assert_eq!(ty(f, "blk.0.attn_v.weight", 4096, &LLAMA3_8B), T::Q4_K);
        assert_eq!(ty(f, "blk.0.attn_v.weight", 4096, &LLAMA2_7B), T::Q3_K);
        assert_eq!(ty(f, "blk.0.ffn_down.weight", 11008, &LLAMA2_7B), T::Q3_K);
        assert_eq!(ty(f, "blk.0.attn_output.weight", 4096, &LLAMA2_7B), T::Q3_K);
        assert_eq!(ty(f, "blk.0.ffn_gate.weight", 4096, &LLAMA2_7B), T::Q2_K);
    }

    #[test]
    fn seventy_b_attn_v() {
        let m = ModelShape {
            n_layers: 80,
            n_gqa: 8,
            has_output: true,
        };
        assert_eq!(
            ty(FileType::Q3_K_S, "blk.40.attn_v.weight", 8192, &m),
            T::Q5_K
        );
        assert_eq!(
            ty(FileType::Q4_K_M, "blk.40.attn_v.weight", 8192, &m),
            T::Q5_K
        );
        assert_eq!(
            ty(FileType::Q4_K_M, "blk.0.attn_v.weight", 8192, &m),
            T::Q6_K
        );
    }

    #[test]
    fn fallbacks_for_short_rows() {
        let m = &LLAMA3_8B;
        // Rows of 64 (stories260K): no 256-block fits.
        assert_eq!(ty(FileType::Q4_K_M, "blk.0.attn_q.weight", 64, m), T::Q5_0);
        assert_eq!(ty(FileType::Q4_K_M, "blk.0.attn_v.weight", 64, m), T::Q8_0);
        assert_eq!(ty(FileType::Q5_K_S, "blk.0.attn_q.weight", 64, m), T::Q5_1);
        assert_eq!(ty(FileType::Q6_K, "blk.0.attn_q.weight", 64, m), T::Q8_0);
        assert_eq!(
            ty(FileType::Q3_K_S, "blk.0.attn_q.weight", 64, m),
            T::IQ4_NL
        );
        assert_eq!(ty(FileType::Q4_0, "output.weight", 64, m), T::Q8_0);
        assert_eq!(ty(FileType::Q4_K_M, "output.weight", 64, m), T::Q8_0);
        // Rows of 48 fit no 32-block either: F16.
        assert_eq!(ty(FileType::Q4_K_M, "blk.0.attn_q.weight", 48, m), T::F16);
        // llama.cpp refuses a legacy target here; wick uses F16 (stories260K's FFN of 172).
        assert_eq!(ty(FileType::Q4_0, "blk.0.ffn_down.weight", 172, m), T::F16);
        assert_eq!(ty(FileType::Q8_0, "blk.0.ffn_down.weight", 172, m), T::F16);
        assert_eq!(
            ty(FileType::Q4_K_M, "blk.0.ffn_down.weight", 172, m),
            T::F16
        );
    }
}
