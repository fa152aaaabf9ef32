//! Chat templates: turning a conversation into the prompt text a chat model was trained on.
//!
//! GGUF files carry their Hugging Face template as Jinja source in `tokenizer.chat_template`.
//! It is rendered with minijinja, configured like the sandboxed Jinja environment that
//! `transformers` uses (trim_blocks, lstrip_blocks, `raise_exception`, Python string
//! methods), so that the same template gives the same bytes here as in Python.

mod builtin;

use std::path::Path;

use anyhow::{anyhow, Context};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

use crate::gguf::GgufFile;

pub use builtin::BUILTIN;

/// The metadata key of a GGUF's default chat template.
pub const GGUF_KEY: &str = "tokenizer.chat_template";

/// One turn of a conversation.
#[derive(Clone, Debug)]
pub struct Message {
    /// "system", "user" or "assistant".
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// A chat template's Jinja source and where it came from.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    /// For messages: "the model's", a built-in name, or a file path.
    origin: String,
}

impl ChatTemplate {
    pub fn new(source: impl Into<String>, origin: impl Into<String>) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            origin: origin.into(),
        }
    }

    /// A built-in template by name (chatml, llama2, llama3, mistral, phi3, gemma, zephyr).
    pub fn builtin(name: &str) -> Option<ChatTemplate> {
        BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(n, src)| ChatTemplate::new(*src, format!("built-in '{n}'")))
    }

    /// The template stored in the model, if it has one.
    pub fn from_gguf(f: &GgufFile) -> Option<ChatTemplate> {
        f.get_str(GGUF_KEY)
            .filter(|s| !s.trim().is_empty())
            .map(|s| ChatTemplate::new(s, "the model's"))
    }

    /// A template file; its whole content is the Jinja source.
    pub fn from_file(path: &Path) -> anyhow::Result<ChatTemplate> {
        let src = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read chat template {}", path.display()))?;
        Ok(ChatTemplate::new(src, path.display().to_string()))
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Renders `messages` as Hugging Face's `apply_chat_template(..., tokenize=False)` does.
    /// `bos_token` and `eos_token` are the text of those tokens ("" when the model has none).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> anyhow::Result<String> {
        let env = environment();
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| anyhow!("{} chat template does not parse: {e}", self.origin))?;
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_iter([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let ctx = Value::from_iter([
            ("messages", Value::from(msgs)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("bos_token", Value::from(bos_token)),
            ("eos_token", Value::from(eos_token)),
        ]);
        tmpl.render(ctx)
            .map_err(|e| anyhow!("{} chat template failed: {}", self.origin, error_text(&e)))
    }
}

/// The error's own message: minijinja's Display adds the template name and line, which are
/// noise for a template that has no file.
fn error_text(e: &Error) -> String {
    match e.detail() {
        Some(d) if e.kind() == ErrorKind::InvalidOperation => d.to_string(),
        _ => e.to_string(),
    }
}

/// A minijinja environment that behaves like transformers' template environment.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // transformers compiles templates with trim_blocks and lstrip_blocks; without them the
    // newlines in multi-line templates would leak into the prompt.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    // Python string and dict methods (.strip(), .split(), .items(), ...) that templates call.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    // Templates reject conversations they cannot format with raise_exception(msg).
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    // minijinja's tojson escapes '<', '>', '&' and '\'' for HTML; transformers' does not, and
    // uses Python's json.dumps separators. Templates put tool schemas through it.
    env.add_filter("tojson", tojson);
    // Llama 3.1+ templates put today's date in the system prompt with strftime_now(fmt),
    // which transformers provides.
    env.add_function("strftime_now", |fmt: String| -> String {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        strftime(&fmt, secs)
    });
    env
}

/// Formats a UTC time given in seconds since 1970 with the common strftime directives
/// (%Y %y %m %B %b %d %e %H %M %S %A %a %j %%); any other directive is kept as written.
pub fn strftime(fmt: &str, unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = unix_secs / 86_400;
    let rem = unix_secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm), for years from 1970 on.
    let z = days as i64 + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let day = doy_mar - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = before[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let month_name = MONTHS[(month - 1) as usize];
    let weekday = DAYS[(days % 7) as usize];

    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// `json.dumps(value, ensure_ascii=False, indent=indent)`, as transformers' tojson filter.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    // Python's separators: ", " and ": " without indent; "," plus a newline with it.
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String | ValueKind::Bytes => {
            let s = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            out.push_str(&serde_json::Value::String(s).to_string());
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let key = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| k.to_string());
                out.push_str(&serde_json::Value::String(key).to_string());
                out.push_str(": ");
                write_json(&v.get_item(k)?, indent, depth + 1, out)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson cannot serialize a {}", v.kind()),
            ))
        }
    }
    Ok(())
}

/// Picks the template for a model: `choice` (a built-in name or a file) when given, else
/// the model's own, else chatml. The second value is a notice for stderr when falling back.
pub fn select(
    choice: Option<&str>,
    f: &GgufFile,
) -> Result<(ChatTemplate, Option<String>), SelectError> {
    if let Some(c) = choice {
        if let Some(t) = ChatTemplate::builtin(c) {
            return Ok((t, None));
        }
        let p = Path::new(c);
        if !p.exists() {
            let names: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
            return Err(SelectError::Unknown(anyhow!(
                "--chat-template '{c}' is neither a built-in template ({}) nor a file",
                names.join(", ")
            )));
        }
        return ChatTemplate::from_file(p)
            .map(|t| (t, None))
            .map_err(SelectError::File);
    }
    if let Some(t) = ChatTemplate::from_gguf(f) {
        return Ok((t, None));
    }
    let notice = "wick: the model has no chat template (tokenizer.chat_template); using chatml \
                  (choose another with --chat-template)"
        .to_string();
    // chatml is in BUILTIN, so this never falls through; the fallback keeps it total.
    let t = ChatTemplate::builtin("chatml")
        .unwrap_or_else(|| ChatTemplate::new(builtin::CHATML, "built-in 'chatml'"));
    Ok((t, Some(notice)))
}

/// Why `select` failed: a name that is not a template (bad usage), or an unreadable file.
#[derive(Debug)]
pub enum SelectError {
    Unknown(anyhow::Error),
    File(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::strftime;

    #[test]
    fn strftime_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday, day 60 of a leap year.
        let t = 1_709_211_909;
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(
            strftime("%A %B %e, %y %H:%M:%S %j %%", t),
            "Thursday February 29, 24 13:05:09 060 %"
        );
        assert_eq!(strftime("%Y-%m-%d %a", 0), "1970-01-01 Thu");
        assert_eq!(strftime("%Y-%m-%d %q", 1_767_225_600), "2026-01-01 %q");
    }
}
