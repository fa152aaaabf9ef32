//! Writing a big output file: a progress bar while it grows, and no half-written file left
//! under the final name if anything fails.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use super::{FailWith, Failure};

/// A bar counting `total` bytes on stderr; hidden unless stderr is a terminal, so logs and
/// scripts see only the final summary.
pub fn bytes_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs `write` on a file next to `path` and renames it to `path` once complete. Because
/// the old file is replaced rather than truncated, the output may even be the input file:
/// a map of the input keeps reading the old contents.
pub fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut tmp = PathBuf::from(path);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    tmp.set_file_name(name);
    let file = File::create(&tmp)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", tmp.display()))
        .file()?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let done = write(&mut w).and_then(|()| {
        w.flush()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))
            .file()?;
        std::fs::rename(&tmp, path)
            .map_err(|e| {
                anyhow::anyhow!("cannot rename {} to {}: {e}", tmp.display(), path.display())
            })
            .file()
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// A size for humans.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}
