//! Text ↔ token ids, built from a GGUF file's `tokenizer.ggml.*` metadata, reproducing
//! llama.cpp's tokenization. The `tokenizers` crate runs the BPE merges and the regex
//! pre-tokenization; this module does what llama.cpp does around them: splitting out
//! special tokens, the SentencePiece space prefix, BOS/EOS, and decoding to bytes.

mod bpe;
mod pretokenize;
mod spm;
mod utf8;

pub use utf8::Utf8Stream;

use anyhow::{anyhow, bail, Context};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{Model, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use crate::gguf::{GgufFile, Value};

/// Token attributes, as llama.cpp derives them from `tokenizer.ggml.token_type`.
mod attr {
    pub const NORMAL: u8 = 1 << 0;
    pub const UNKNOWN: u8 = 1 << 1;
    pub const CONTROL: u8 = 1 << 2;
    pub const USER_DEFINED: u8 = 1 << 3;
    pub const UNUSED: u8 = 1 << 4;
    pub const BYTE: u8 = 1 << 5;
    /// When split out of text, eat the whitespace to the left / right.
    pub const LSTRIP: u8 = 1 << 6;
    pub const RSTRIP: u8 = 1 << 7;

    /// `tokenizer.ggml.token_type` → attributes (0 and unknown values: none).
    pub fn from_type(t: i64) -> u8 {
        match t {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => 0,
        }
    }
}

/// Token texts that llama.cpp treats as end-of-generation (and so as control tokens).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle pad / repo / file-separator tokens, also end-of-generation in llama.cpp.
const FIM_EOG_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `llama`: SentencePiece-style, "▁" for spaces, `<0xXX>` byte fallback.
    Spm,
    /// `gpt2`: byte-level BPE with a regex pre-tokenizer.
    Bpe,
}

pub struct Tokenizer {
    kind: Kind,
    pieces: Vec<String>,
    attrs: Vec<u8>,
    /// Output bytes of every token, concatenated; token `i` is `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<usize>,
    model: BPE,
    /// Only for `Kind::Bpe`.
    pre: Option<Sequence>,
    /// Control, user-defined and unknown tokens, longest text first: the order in which
    /// llama.cpp looks for them in the input.
    specials: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    /// Sorted.
    eog: Vec<u32>,
}

/// A piece of input text after special tokens are split out.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

impl Tokenizer {
    pub fn from_gguf(f: &GgufFile) -> anyhow::Result<Tokenizer> {
        let model_name = f
            .get_str("tokenizer.ggml.model")
            .context("GGUF has no tokenizer.ggml.model")?;
        let kind = match model_name {
            "llama" => Kind::Spm,
            "gpt2" => Kind::Bpe,
            other => bail!(
                "unsupported tokenizer model '{other}' (tokenizer.ggml.model); wick supports 'llama' (SentencePiece) and 'gpt2' (byte-level BPE)"
            ),
        };

        let pieces: Vec<String> = f
            .get_array("tokenizer.ggml.tokens")
            .context("GGUF has no tokenizer.ggml.tokens")?
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| anyhow!("tokenizer.ggml.tokens[{i}] is not a string"))
            })
            .collect::<anyhow::Result<_>>()?;
        let n = pieces.len();
        if n == 0 || n > u32::MAX as usize {
            bail!("tokenizer.ggml.tokens has {n} entries");
        }

        let scores: Vec<f32> = match f.get_array("tokenizer.ggml.scores") {
            None => vec![0.0; n],
            Some(a) => numbers(a, n, "tokenizer.ggml.scores")?
                .into_iter()
                .map(|s| s as f32)
                .collect(),
        };
        let mut attrs: Vec<u8> = match f.get_array("tokenizer.ggml.token_type") {
            None => vec![attr::NORMAL; n],
            Some(a) => numbers(a, n, "tokenizer.ggml.token_type")?
                .into_iter()
                .map(|t| attr::from_type(t as i64))
                .collect(),
        };

        let pre_name = f.get_str("tokenizer.ggml.pre");
        let pre_cfg = (kind == Kind::Bpe).then(|| pretokenize::config_for(pre_name));

        // Special token ids, with llama.cpp's defaults per model; ids outside the
        // vocabulary are dropped with a warning.
        let (def_bos, def_eos, def_unk) = match kind {
            Kind::Spm => (Some(1), Some(2), Some(0)),
            Kind::Bpe => (Some(11), Some(11), None),
        };
        let id = |key: &str, default: Option<u32>| -> Option<u32> {
            let full = format!("tokenizer.ggml.{key}");
            let v = match f.get(&full) {
                Some(v) => v.as_u64().map(|x| x.min(u32::MAX as u64) as u32),
                None => default,
            };
            match v {
                Some(x) if (x as usize) < n => Some(x),
                Some(x) => {
                    eprintln!("wick: warning: {full} = {x} is outside the vocabulary ({n} tokens); ignoring it");
                    None
                }
                None => None,
            }
        };
        let bos = id("bos_token_id", def_bos);
        let eos = id("eos_token_id", def_eos);
        let unk = id("unknown_token_id", def_unk);
        let eot = id("eot_token_id", None);
        let eom = id("eom_token_id", None);

        let default_add_bos = match kind {
            Kind::Spm => true,
            Kind::Bpe => pre_cfg.as_ref().is_some_and(|c| c.add_bos),
        };
        let add_bos = f
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(default_add_bos);
        let add_eos = f.get_bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let add_space_prefix = kind == Kind::Spm
            && f.get_bool("tokenizer.ggml.add_space_prefix")
                .unwrap_or(true);
        if add_bos && bos.is_none() {
            bail!("tokenizer.ggml.add_bos_token is true, but there is no BOS token");
        }
        if add_eos && eos.is_none() {
            bail!("tokenizer.ggml.add_eos_token is true, but there is no EOS token");
        }

        let eog = end_of_generation(&pieces, &mut attrs, [eos, eot, eom]);

        // llama.cpp renders these gpt-oss tokens as text, treating them as user-defined.
        for (p, a) in pieces.iter().zip(attrs.iter_mut()) {
            if matches!(
                p.as_str(),
                "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>"
            ) {
                *a = attr::USER_DEFINED;
            }
        }

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .filter(|&i| !pieces[i as usize].is_empty())
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(pieces[i as usize].len()));

        // Phi-3's special tokens eat the whitespace after them (llama.cpp sets this by model
        // name, as the file does not carry per-token strip flags).
        let general_name = f.get_str("general.name").unwrap_or("").to_lowercase();
        if general_name.contains("phi-3") || general_name.contains("phi3") {
            for &i in &specials {
                attrs[i as usize] |= attr::RSTRIP;
            }
            for (i, p) in pieces.iter().enumerate() {
                match p.as_str() {
                    "</s>" => attrs[i] |= attr::RSTRIP,
                    "<unk>" | "<s>" | "<|endoftext|>" => attrs[i] &= !attr::RSTRIP,
                    _ => {}
                }
            }
        }

        let (model, pre) = match kind {
            Kind::Spm => {
                let unk_piece = unk.map(|u| pieces[u as usize].as_str());
                (spm::build_model(&pieces, &scores, unk_piece)?, None)
            }
            Kind::Bpe => {
                let merges: Vec<&str> = match f.get_array("tokenizer.ggml.merges") {
                    Some(a) => a
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            v.as_str().ok_or_else(|| {
                                anyhow!("tokenizer.ggml.merges[{i}] is not a string")
                            })
                        })
                        .collect::<anyhow::Result<_>>()?,
                    None => bail!("GGUF has no tokenizer.ggml.merges (needed by a gpt2 tokenizer)"),
                };
                let cfg = pre_cfg.as_ref().context("pre-tokenizer config")?;
                let model = bpe::build_model(&pieces, &merges, cfg.ignore_merges)?;
                (model, Some(pretokenize::build(cfg.regexes)?))
            }
        };

        let mut bytes = Vec::new();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        for (p, &a) in pieces.iter().zip(&attrs) {
            bytes.extend(output_bytes(kind, p, a));
            offsets.push(bytes.len());
        }

        Ok(Tokenizer {
            kind,
            pieces,
            attrs,
            bytes,
            offsets,
            model,
            pre,
            specials,
            bos,
            eos,
            add_bos,
            add_eos,
            add_space_prefix,
            eog,
        })
    }

    /// add_special: add BOS (and EOS) if the model's metadata says so (llama.cpp's add_special).
    /// parse_special: text of control tokens such as "<|im_start|>" becomes that token;
    /// otherwise it is tokenized as plain text.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> anyhow::Result<Vec<u32>> {
        let fragments = self.split_special(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.push(
                self.bos
                    .context("the model adds BOS but has no BOS token")?,
            );
        }
        match self.kind {
            Kind::Spm => {
                // llama.cpp prefixes a space to the text at the start and after each special
                // token, then writes every space as "▁".
                let mut prev_special = true;
                let mut buf = String::new();
                for frag in &fragments {
                    match *frag {
                        Fragment::Text(t) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in t.chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            self.run_model(&buf, &mut out)?;
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Kind::Bpe => {
                let pre = self
                    .pre
                    .as_ref()
                    .context("BPE tokenizer without a pre-tokenizer")?;
                for frag in &fragments {
                    match *frag {
                        Fragment::Text(t) => {
                            let mut pts = PreTokenizedString::from(t);
                            pre.pre_tokenize(&mut pts)
                                .map_err(|e| anyhow!("pre-tokenizing: {e}"))?;
                            for (word, _, _) in
                                pts.get_splits(OffsetReferential::Original, OffsetType::None)
                            {
                                self.run_model(word, &mut out)?;
                            }
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.push(
                self.eos
                    .context("the model adds EOS but has no EOS token")?,
            );
        }
        Ok(out)
    }

    fn run_model(&self, word: &str, out: &mut Vec<u32>) -> anyhow::Result<()> {
        let tokens = self.model.tokenize(word).map_err(|e| anyhow!("BPE: {e}"))?;
        out.extend(tokens.iter().map(|t| t.id));
        Ok(())
    }

    /// Splits special tokens out of `text` as llama.cpp does: for each special token,
    /// longest first, every occurrence in the remaining text becomes that token. Control and
    /// unknown tokens are split only with `parse_special`; user-defined ones always are.
    fn split_special<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(text));
        for &id in &self.specials {
            let a = self.attrs[id as usize];
            if !parse_special && a & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = self.pieces[id as usize].as_str();
            // Most special tokens occur nowhere: skip the rebuild then.
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(needle)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut rest) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(pos) = rest.find(needle) {
                    let mut left = &rest[..pos];
                    if a & attr::LSTRIP != 0 {
                        left = left.trim_end_matches(is_c_space);
                    }
                    if !left.is_empty() {
                        next.push(Fragment::Text(left));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[pos + needle.len()..];
                    if a & attr::RSTRIP != 0 {
                        rest = rest.trim_start_matches(is_c_space);
                    }
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            frags = next;
        }
        frags
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// tokenizer.ggml.add_bos_token, with llama.cpp's default per model (spm: true, gpt2:
    /// false, except Llama-3-style pre-tokenizers).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// End-of-generation: eos, eot, eom, and control tokens llama.cpp treats as EOG (e.g.
    /// "<|im_end|>", "<|eot_id|>", "<|endoftext|>").
    /// Every end-of-generation token.
    pub fn eog_tokens(&self) -> &[u32] {
        &self.eog
    }

    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The vocabulary string of a token, as stored in the file ("" for an id out of range).
    pub fn piece(&self, id: u32) -> &str {
        self.pieces.get(id as usize).map_or("", String::as_str)
    }

    /// The bytes a token contributes to output text: SPM "▁"→" ", "<0x0A>" byte tokens → the
    /// byte, GPT-2 byte-level chars → their bytes; control tokens → empty (llama.cpp's
    /// default when not rendering special tokens). Empty for an id out of range.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.bytes[a..b],
            _ => &[],
        }
    }

    /// Like `token_bytes`, with SentencePiece's decoding rule (llama2.c, llama.cpp): right
    /// after BOS, the space that the tokenizer prefixed to the text is dropped.
    pub fn token_bytes_after(&self, prev: Option<u32>, id: u32) -> &[u8] {
        let b = self.token_bytes(id);
        if self.kind == Kind::Spm && prev.is_some() && prev == self.bos {
            b.strip_prefix(b" ").unwrap_or(b)
        } else {
            b
        }
    }

    /// "llama" or "gpt2".
    pub fn model_kind(&self) -> &str {
        match self.kind {
            Kind::Spm => "llama",
            Kind::Bpe => "gpt2",
        }
    }
}

/// C's `isspace`, which llama.cpp uses to strip around special tokens.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// A numeric array of exactly (at least) `n` entries, as f64.
fn numbers(a: &[Value], n: usize, key: &str) -> anyhow::Result<Vec<f64>> {
    if a.len() < n {
        bail!("{key} has {} entries, fewer than the {n} tokens", a.len());
    }
    a[..n]
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_f64()
                .ok_or_else(|| anyhow!("{key}[{i}] is not a number"))
        })
        .collect()
}

/// The set of end-of-generation ids, as llama.cpp builds it: the eos/eot/eom ids, and
/// tokens recognised by their text, which are made control tokens if they were not.
fn end_of_generation(pieces: &[String], attrs: &mut [u8], ids: [Option<u32>; 3]) -> Vec<u32> {
    let mut eog: Vec<u32> = Vec::new();
    for (i, p) in pieces.iter().enumerate() {
        if EOG_TEXTS.contains(&p.as_str()) || FIM_EOG_TEXTS.contains(&p.as_str()) {
            eog.push(i as u32);
            attrs[i] |= attr::CONTROL;
        }
    }
    eog.extend(ids.into_iter().flatten());
    let has = |eog: &[u32], t: &str| eog.iter().any(|&i| pieces[i as usize] == t);
    // gpt-oss and solar-open use "<|end|>" inside a turn: it does not end generation there.
    if (has(&eog, "<|return|>") && has(&eog, "<|call|>"))
        || (has(&eog, "<|calls|>") && has(&eog, "<|flush|>"))
    {
        for &i in eog.iter().filter(|&&i| pieces[i as usize] == "<|end|>") {
            attrs[i as usize] = attr::USER_DEFINED;
        }
        eog.retain(|&i| pieces[i as usize] != "<|end|>");
    }
    // Gemma 4 and PaddleOCR: "</s>" is not an end there.
    if has(&eog, "<|tool_response>") {
        for &i in eog.iter().filter(|&&i| pieces[i as usize] == "</s>") {
            attrs[i as usize] = attr::NORMAL;
        }
        eog.retain(|&i| pieces[i as usize] != "</s>");
    }
    eog.sort_unstable();
    eog.dedup();
    eog
}

/// The bytes a token contributes to output text, by llama.cpp's `token_to_piece` without
/// special-token rendering.
fn output_bytes(kind: Kind, piece: &str, a: u8) -> Vec<u8> {
    if a & (attr::CONTROL | attr::UNKNOWN) != 0 {
        Vec::new()
    } else if a & attr::USER_DEFINED != 0 {
        piece.as_bytes().to_vec()
    } else if a & attr::NORMAL != 0 {
        match kind {
            Kind::Spm => spm::piece_bytes(piece),
            Kind::Bpe => bpe::piece_bytes(piece),
        }
    } else if a & attr::BYTE != 0 {
        spm::byte_token_value(piece)
            .map(|b| vec![b])
            .unwrap_or_default()
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests;
