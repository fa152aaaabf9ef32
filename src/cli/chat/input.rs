//! Reading the user's turns at the terminal: line editing and history through rustyline,
//! and input over several lines, either with a trailing `\` or inside a `"""` block.

use std::path::{Path, PathBuf};

use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Behavior, Config, Editor};

use crate::cli::log::Log;

const PROMPT: &str = ">>> ";
const MORE: &str = "... ";
const QUOTES: &str = "\"\"\"";

/// What the user did at the prompt.
pub enum Input {
    Text(String),
    /// Ctrl-C: the line (or the lines so far) were dropped.
    Interrupted,
    /// Ctrl-D on an empty line.
    Eof,
}

pub struct LineReader {
    editor: Editor<(), FileHistory>,
    history: Option<PathBuf>,
}

impl LineReader {
    pub fn new(log: &Log) -> rustyline::Result<LineReader> {
        let config = Config::builder()
            .auto_add_history(false)
            .history_ignore_dups(true)?
            .max_history_size(1000)?
            // The prompt and the echo of typing go to the terminal even when stdout is
            // redirected (`wick chat > log.txt`), which then holds the replies only.
            .behavior(Behavior::PreferTerm)
            .build();
        let mut editor = Editor::with_config(config)?;
        let history = history_path();
        if let Some(p) = history.as_deref().filter(|p| p.exists()) {
            if let Err(e) = editor.load_history(p) {
                log.notice(format_args!(
                    "wick: cannot read the history {}: {e}",
                    p.display()
                ));
            }
        }
        log.info(format_args!(
            "history: {}",
            history
                .as_deref()
                .map_or("none (no HOME)".into(), |p| p.display().to_string())
        ));
        Ok(LineReader { editor, history })
    }

    /// Reads one turn, over as many lines as it takes.
    pub fn read(&mut self, log: &Log) -> rustyline::Result<Input> {
        let mut multi = MultiLine::default();
        let mut prompt = PROMPT;
        loop {
            match self.editor.readline(prompt) {
                Ok(line) => {
                    if multi.push(&line) {
                        break;
                    }
                    prompt = MORE;
                }
                Err(ReadlineError::Interrupted) => return Ok(Input::Interrupted),
                Err(ReadlineError::Eof) if prompt == PROMPT => return Ok(Input::Eof),
                // Ctrl-D inside a multi-line input ends it, as the end of a file would.
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e),
            }
        }
        let text = multi.text();
        if !text.trim().is_empty() {
            self.remember(&text, log);
        }
        Ok(Input::Text(text))
    }

    /// Adds to the history, and appends it to the history file at once, so that a killed
    /// session keeps it too.
    fn remember(&mut self, text: &str, log: &Log) {
        let _ = self.editor.add_history_entry(text);
        let Some(path) = &self.history else { return };
        let saved = match path.parent() {
            Some(dir) => std::fs::create_dir_all(dir).map_err(ReadlineError::from),
            None => Ok(()),
        }
        .and_then(|_| self.editor.append_history(path));
        if let Err(e) = saved {
            log.notice(format_args!(
                "wick: cannot write the history {}: {e}",
                path.display()
            ));
            // Once is enough.
            self.history = None;
        }
    }
}

/// `$XDG_DATA_HOME/wick/history`, or `~/.local/share/wick/history`.
fn history_path() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    // The XDG spec says relative paths are invalid and to be ignored.
    let data = var("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".local/share")))?;
    Some(data.join("wick").join("history"))
}

/// Joins the lines of one input: a line ending in `\` continues on the next, and a line
/// starting with `"""` opens a block that the next line ending in `"""` closes.
#[derive(Default)]
struct MultiLine {
    parts: Vec<String>,
    block: bool,
}

impl MultiLine {
    /// Adds a line; true when the input is complete.
    fn push(&mut self, line: &str) -> bool {
        if self.block {
            if let Some(body) = line.trim_end().strip_suffix(QUOTES) {
                if !body.is_empty() {
                    self.parts.push(body.to_string());
                }
                return true;
            }
            self.parts.push(line.to_string());
            return false;
        }
        if self.parts.is_empty() {
            if let Some(rest) = line.trim_start().strip_prefix(QUOTES) {
                if let Some(body) = rest.trim_end().strip_suffix(QUOTES) {
                    self.parts.push(body.to_string());
                    return true;
                }
                self.block = true;
                if !rest.is_empty() {
                    self.parts.push(rest.to_string());
                }
                return false;
            }
        }
        match line.strip_suffix('\\') {
            Some(body) => {
                self.parts.push(body.to_string());
                false
            }
            None => {
                self.parts.push(line.to_string());
                true
            }
        }
    }

    fn text(self) -> String {
        self.parts.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::MultiLine;

    /// Feeds lines until one completes the input; returns the text and the lines used.
    fn join(lines: &[&str]) -> (String, usize) {
        let mut m = MultiLine::default();
        for (i, l) in lines.iter().enumerate() {
            if m.push(l) {
                return (m.text(), i + 1);
            }
        }
        (m.text(), lines.len())
    }

    #[test]
    fn single_line() {
        assert_eq!(join(&["hello", "x"]), ("hello".into(), 1));
    }

    #[test]
    fn backslash_continues() {
        assert_eq!(join(&["a\\", "b\\", "c", "x"]), ("a\nb\nc".into(), 3));
    }

    #[test]
    fn quote_block() {
        assert_eq!(
            join(&["\"\"\"", "one\\", "  two", "\"\"\"", "x"]),
            ("one\\\n  two".into(), 4)
        );
        assert_eq!(
            join(&["\"\"\"first", "last\"\"\""]),
            ("first\nlast".into(), 2)
        );
        assert_eq!(join(&["\"\"\"inline\"\"\"", "x"]), ("inline".into(), 1));
        // Quotes later in a line are text.
        assert_eq!(join(&["say \"\"\"", "x"]), ("say \"\"\"".into(), 1));
    }
}
