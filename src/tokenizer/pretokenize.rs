//! Pre-tokenizers for byte-level BPE vocabularies, chosen by `tokenizer.ggml.pre` the way
//! llama.cpp chooses them.
//!
//! llama.cpp splits text with a list of regexes applied in turn: each one splits every piece
//! left by the previous one, and keeps both the matches and the text between them. That is
//! a `Sequence` of `Split(regex, Isolated)` pre-tokenizers. Then ByteLevel maps bytes to the
//! GPT-2 byte-level alphabet in which the vocabulary is written.

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};

/// GPT-2's pattern. llama.cpp drops the final `|\s+` of the original, but whitespace the
/// pattern leaves unmatched still becomes a piece of its own, so the result is the same.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3's pattern, as in its tokenizer.json. llama.cpp rewrites `(?i:...)` as character
/// classes for its own regex engine; fancy-regex takes the original.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's pattern: Llama 3's, with single digits.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

/// llama.cpp's `default` pre-tokenizer, used when the file names none.
const DEFAULT: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    GPT2,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// The pre-tokenizer settings for one `tokenizer.ggml.pre` value.
pub struct PreConfig {
    pub regexes: &'static [&'static str],
    /// A whole pre-token that is in the vocabulary is taken as is, without merges (Llama 3).
    pub ignore_merges: bool,
    /// llama.cpp's default for `add_bos_token` when the file does not say.
    pub add_bos: bool,
}

impl PreConfig {
    const fn new(regexes: &'static [&'static str]) -> Self {
        PreConfig { regexes, ignore_merges: false, add_bos: false }
    }
}

/// The settings for `pre`, or `None` if llama.cpp does not know that name.
pub fn lookup(pre: &str) -> Option<PreConfig> {
    let cfg = match pre {
        "default" => PreConfig::new(DEFAULT),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => PreConfig { ignore_merges: true, add_bos: true, ..PreConfig::new(&[LLAMA3]) },
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => PreConfig::new(&[LLAMA3]),
        "deepseek-llm" => PreConfig::new(&[
            r"[\r\n]",
            r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
            r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
            r"\s+$",
            r"[一-龥ࠀ-一가-퟿]+",
            r"\p{N}+",
        ]),
        "deepseek-coder" => PreConfig::new(&[
            r"[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            r"[一-龥ࠀ-一가-퟿]+",
            r"\p{N}",
        ]),
        "deepseek-v3" | "hunyuan-dense" | "joyai-llm" => PreConfig::new(&[
            r"\p{N}{1,3}",
            r"[一-龥぀-ゟ゠-ヿ]+",
            r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
        ]),
        "falcon" => PreConfig::new(&[
            r"[\p{P}\$\+<=>\^~\|`]+",
            GPT2,
            r"[0-9][0-9][0-9]",
        ]),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b"
        | "mellum2" => PreConfig::new(&[r"\p{N}", GPT2]),
        "gpt-2" | "mpt" | "olmo" | "jais" | "phi-2" | "jina-es" | "jina-de" | "gigachat"
        | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "jina-v1-en"
        | "jina-v2-code" | "roberta-bpe" | "trillion" | "granite-docling" | "exaone4" => {
            PreConfig::new(&[GPT2])
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "stablelm2" | "hunyuan"
        | "solar-open" | "megrez" => PreConfig::new(&[QWEN2]),
        "qwen35" => PreConfig::new(&[QWEN35]),
        "poro-chat" | "bloom" | "gpt3-finnish" => PreConfig::new(&[PORO]),
        "viking" => PreConfig::new(&[PORO, r"\p{N}"]),
        "tekken" => PreConfig { ignore_merges: true, add_bos: true, ..PreConfig::new(&[TEKKEN]) },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => PreConfig::new(&[GPT4O]),
        _ => return None,
    };
    Some(cfg)
}

/// The settings for a file's `tokenizer.ggml.pre` (absent: llama.cpp's `default`). An
/// unknown name also falls back to `default`, with a warning, so that a newer model still
/// loads; its tokenization may differ from the original.
pub fn config_for(pre: Option<&str>) -> PreConfig {
    match pre {
        None => {
            eprintln!("wick: warning: GGUF has no tokenizer.ggml.pre; using the default pre-tokenizer, tokenization may be degraded");
            PreConfig::new(DEFAULT)
        }
        Some(p) => lookup(p).unwrap_or_else(|| {
            eprintln!("wick: warning: unknown tokenizer.ggml.pre '{p}'; using the default pre-tokenizer, tokenization may be degraded");
            PreConfig::new(DEFAULT)
        }),
    }
}

/// Builds the pre-tokenizer: the regex splits, then byte-level mapping.
pub fn build(regexes: &[&str]) -> anyhow::Result<Sequence> {
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(regexes.len() + 1);
    for r in regexes {
        let split = Split::new(SplitPattern::Regex((*r).to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| anyhow::anyhow!("bad pre-tokenizer regex {r:?}: {e}"))?;
        steps.push(split.into());
    }
    // The regexes already split the text, so ByteLevel only maps bytes to characters.
    steps.push(ByteLevel::new(false, false, false).into());
    Ok(Sequence::new(steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every regex in the table compiles with fancy-regex.
    #[test]
    fn all_regexes_compile() {
        let names = [
            "default", "llama3", "dbrx", "deepseek-llm", "deepseek-coder", "deepseek-v3", "falcon",
            "starcoder", "gpt-2", "qwen2", "qwen35", "poro-chat", "viking", "tekken", "gpt-4o",
        ];
        for n in names {
            let cfg = lookup(n).expect(n);
            build(cfg.regexes).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }
}
