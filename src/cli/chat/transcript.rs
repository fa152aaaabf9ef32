//! `/save` and `/load`: a conversation as a JSON array of `{"role", "content"}` objects, the
//! shape of Hugging Face's and OpenAI's message lists, so other tools read it as it is.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::chat::Message;

pub fn save(path: &Path, messages: &[Message]) -> Result<()> {
    let list: Vec<Value> = messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    let mut text = serde_json::to_string_pretty(&list)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn load(path: &Path) -> Result<Vec<Message>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).with_context(|| format!("{} is not a saved conversation", path.display()))
}

fn parse(text: &str) -> Result<Vec<Message>> {
    let v: Value = serde_json::from_str(text)?;
    let Some(list) = v.as_array() else {
        bail!("expected a JSON array of messages");
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |k: &str| {
                m.get(k)
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("message {i} has no string \"{k}\""))
            };
            Ok(Message::new(field("role")?, field("content")?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = std::env::temp_dir().join(format!("wick-transcript-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.json");
        let msgs = vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Say \"hi\"\nplease"),
            Message::new("assistant", "hi"),
        ];
        save(&p, &msgs).unwrap();
        let back = load(&p).unwrap();
        assert_eq!(back.len(), 3);
        for (a, b) in msgs.iter().zip(&back) {
            assert_eq!((&a.role, &a.content), (&b.role, &b.content));
        }
    }

    #[test]
    fn rejects_other_json() {
        assert!(parse("{}").is_err());
        let e = parse(r#"[{"role": "user"}]"#).unwrap_err();
        assert!(e.to_string().contains("\"content\""), "{e}");
        assert!(parse("not json").is_err());
    }
}
