//! The `wick` command line: argument parsing, exit codes, and one-line errors.

mod bench;
mod chat;
mod engine;
mod gen;
mod info;
mod load;
mod log;
mod out;
mod quantize;
mod selftest;
#[cfg(feature = "cuda")]
mod selftest_plain;
#[cfg(feature = "cuda")]
mod selftest_sampled;
#[cfg(feature = "cuda")]
mod selftest_spec;
mod synth;
mod tokenize;
mod write;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Why a command failed; each kind has its own exit code.
pub enum Failure {
    /// Bad arguments or input text: exit 1.
    Usage(anyhow::Error),
    /// A model or other file could not be read: exit 2.
    File(anyhow::Error),
    /// Generation failed part-way: exit 3.
    Generation(anyhow::Error),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 1,
            Failure::File(_) => 2,
            Failure::Generation(_) => 3,
        }
    }

    fn error(&self) -> &anyhow::Error {
        match self {
            Failure::Usage(e) | Failure::File(e) | Failure::Generation(e) => e,
        }
    }
}

/// Tags an error with the kind of failure it is.
pub trait FailWith<T> {
    fn usage(self) -> Result<T, Failure>;
    fn file(self) -> Result<T, Failure>;
    fn generation(self) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> FailWith<T> for Result<T, E> {
    fn usage(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::Usage(e.into()))
    }
    fn file(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::File(e.into()))
    }
    fn generation(self) -> Result<T, Failure> {
        self.map_err(|e| Failure::Generation(e.into()))
    }
}

#[derive(Parser)]
#[command(
    name = "wick",
    version,
    about = "Run large language models from GGUF files, locally."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt; only the generated text goes to stdout.
    Gen(gen::GenArgs),
    /// Chat with an instruct model; with stdin not a terminal, answer it as one message.
    Chat(chat::ChatArgs),
    /// Print the token ids of a text, space-separated on one line.
    Tokenize(tokenize::TokenizeArgs),
    /// Describe a GGUF file: architecture, parameters, tensor types and metadata.
    Info(info::InfoArgs),
    /// Measure prompt processing (pp) and generation (tg) speed, like llama-bench.
    Bench(bench::BenchArgs),
    /// Check every GPU op against the CPU reference on random inputs.
    Selftest(selftest::SelftestArgs),
    /// Write a model with a real model's shapes and random weights, for speed tests.
    Synth(synth::SynthArgs),
    /// Convert a model's tensors to a quantization mix, as llama-quantize does.
    Quantize(quantize::QuantizeArgs),
}

/// Runs the program; returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Gen(a) => gen::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Info(a) => info::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Selftest(a) => selftest::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Quantize(a) => quantize::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // One line, whatever the chain of causes: scripts read the last line of stderr.
            let msg = format!("{:#}", f.error()).replace('\n', " ");
            eprintln!("wick: error: {msg}");
            ExitCode::from(f.code())
        }
    }
}

/// The text given as an argument, or all of stdin when the argument is absent or "-".
fn read_text(arg: Option<String>) -> Result<String, Failure> {
    match arg {
        Some(t) if t != "-" => Ok(t),
        _ => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                .map_err(|e| Failure::Usage(anyhow::anyhow!("cannot read stdin: {e}")))?;
            String::from_utf8(buf).map_err(|e| {
                Failure::Usage(anyhow::anyhow!(
                    "stdin is not valid UTF-8 (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                ))
            })
        }
    }
}

/// The error for `--gpu` in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
fn no_cuda() -> Failure {
    Failure::Usage(anyhow::anyhow!(
        "this wick was built without CUDA support: rebuild with `--features cuda` to use --gpu"
    ))
}
