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
const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];

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
        PreConfig {
            regexes,
            ignore_merges: false,
            add_bos: false,
        }
    }
}

/// The settings for `pre`, or `None` if llama.cpp does not know that name.
pub fn lookup(pre: &str) -> Option<PreConfig> {
    let cfg = match pre {
        "default" => PreConfig::new(DEFAULT),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..PreConfig::new(&[LLAMA3])
        },
        "dbrx" | "smaug-bpe" | "glm4" | "chatglm-bpe" => PreConfig::new(&[LLAMA3]),
        "deepseek-llm" => PreConfig::new(&[
            r"[\r\n]",
            // Cased letters (written as escapes: some of these code points have canonical
            // equivalents that editors may silently substitute).
            r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+",
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
        "falcon" => PreConfig::new(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"]),
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
        "tekken" => PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..PreConfig::new(&[TEKKEN])
        },
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
        let split = Split::new(
            SplitPattern::Regex((*r).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
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
            "default",
            "llama3",
            "dbrx",
            "deepseek-llm",
            "deepseek-coder",
            "deepseek-v3",
            "falcon",
            "starcoder",
            "gpt-2",
            "qwen2",
            "qwen35",
            "poro-chat",
            "viking",
            "tekken",
            "gpt-4o",
        ];
        for n in names {
            let cfg = lookup(n).expect(n);
            build(cfg.regexes).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }
}
