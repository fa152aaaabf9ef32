//! What `gen` and `chat` say on stderr besides errors: notices, `--verbose` details, and
//! progress bars. Bars are drawn only on a terminal, so scripts never see them.

use std::fmt::Display;
use std::io::IsTerminal;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Args, Clone, Copy)]
pub struct LogArgs {
    /// Print the model, backend and context details on stderr.
    #[arg(long, conflicts_with = "quiet")]
    verbose: bool,
    /// Print nothing on stderr but errors: no notices, no progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy)]
pub struct Log {
    args: LogArgs,
    tty: bool,
}

impl Log {
    pub fn new(args: LogArgs) -> Log {
        Log {
            args,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Something the user should know, such as a fallback taken; silenced by `--quiet`.
    pub fn notice(&self, msg: impl Display) {
        if !self.args.quiet {
            eprintln!("{msg}");
        }
    }

    /// A detail only `--verbose` asks for.
    pub fn info(&self, msg: impl Display) {
        if self.args.verbose {
            eprintln!("wick: {msg}");
        }
    }

    /// True when progress bars are drawn.
    pub fn shows_progress(&self) -> bool {
        self.tty && !self.args.quiet
    }

    /// A progress bar of `len` steps on stderr, hidden unless `shows_progress`.
    pub fn bar(&self, len: usize, msg: &'static str) -> ProgressBar {
        if !self.shows_progress() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
        // No colours in the template: plain text reads on any terminal theme.
        if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {eta}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(msg);
        bar
    }
}
