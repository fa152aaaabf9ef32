//! Opening the model named by `-m`, or the one compiled into the binary.

use std::path::{Path, PathBuf};

use super::{FailWith, Failure};
use crate::gguf::{GgufError, GgufFile};
use crate::model::{DEFAULT_MODEL, DEFAULT_MODEL_NAME};

pub fn open_model(path: Option<&Path>) -> Result<(GgufFile, String), Failure> {
    match path {
        None => Ok((
            GgufFile::from_static(DEFAULT_MODEL).file()?,
            DEFAULT_MODEL_NAME.to_string(),
        )),
        Some(p) => {
            let f = match GgufFile::open(p) {
                Ok(f) => f,
                // The I/O error already names the file.
                Err(e @ GgufError::Io(..)) => return Err(Failure::File(e.into())),
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(p.display().to_string())).file()
                }
            };
            Ok((f, display_name(p)))
        }
    }
}

fn display_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| PathBuf::from(p).display().to_string())
}
