//! A draft must speak the target's vocabulary: its token ids are proposed as the target's.

use anyhow::{bail, Result};

use crate::gguf::GgufFile;

/// Refuses a draft whose tokens or token types differ from the target's.
pub fn check_vocab(target: &GgufFile, draft: &GgufFile) -> Result<()> {
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type"] {
        let (t, d) = (target.get_array(key), draft.get_array(key));
        let (Some(t), Some(d)) = (t, d) else {
            if t.is_some() != d.is_some() {
                bail!("the draft model's vocabulary differs from the model's: only one has {key}");
            }
            continue;
        };
        if t.len() != d.len() {
            bail!(
                "the draft model's vocabulary differs from the model's: {} tokens against {}",
                d.len(),
                t.len()
            );
        }
        if let Some(i) = t.iter().zip(d).position(|(a, b)| a != b) {
            bail!(
                "the draft model's vocabulary differs from the model's at token {i} ({key}: {:?} against {:?})",
                d[i],
                t[i]
            );
        }
    }
    Ok(())
}
