//! `wick tokenize`: token ids of a text, in the format of llama.cpp's tokenizer test files.

use std::fmt::Write;
use std::path::PathBuf;

use clap::Args;

use super::load::open_model;
use super::out::Stdout;
use super::{read_text, FailWith, Failure};
use crate::tokenizer::Tokenizer;

#[derive(Args)]
pub struct TokenizeArgs {
    /// The GGUF file whose tokenizer to use (default: the embedded stories260K).
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Turn the text of special tokens such as <|im_start|> into those tokens.
    #[arg(long)]
    special: bool,
    /// Do not add the BOS token, even if the model asks for one.
    #[arg(long)]
    no_bos: bool,
    /// Print the pieces, quoted, instead of the ids.
    #[arg(long)]
    pieces: bool,
    /// The text (read from stdin when absent or "-").
    text: Option<String>,
}

pub fn run(a: TokenizeArgs) -> Result<(), Failure> {
    let text = read_text(a.text)?;
    let (f, _) = open_model(a.model.as_deref())?;
    let tok = Tokenizer::from_gguf(&f).file()?;
    let ids = tok.encode(&text, !a.no_bos, a.special).usage()?;
    let mut s = String::new();
    for &id in &ids {
        if a.pieces {
            let sep = if s.is_empty() { "" } else { " " };
            let _ = write!(s, "{sep}{:?}", tok.piece(id));
        } else {
            // A space before each id, exactly as llama.cpp's `.out` files have it.
            let _ = write!(s, " {id}");
        }
    }
    s.push('\n');
    Stdout::new().write(&s).file()
}
