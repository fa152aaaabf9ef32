//! Turning a stream of token bytes into valid UTF-8 text.

/// Streams valid UTF-8 out of token bytes. Tokens often end in the middle of a multi-byte
/// character (byte-fallback tokens, byte-level BPE), so a character split across tokens is
/// held back until it is whole, then emitted once. Invalid sequences become U+FFFD.
#[derive(Debug, Default, Clone)]
pub struct Utf8Stream {
    /// Bytes of an incomplete character at the end of the last push (at most 3), kept in a
    /// `Vec` that is reused so steady-state pushes do not allocate.
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the text that `bytes` completes to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
        if self.pending.is_empty() {
            let tail = decode(bytes, out);
            self.pending.extend_from_slice(&bytes[tail..]);
        } else {
            let mut buf = std::mem::take(&mut self.pending);
            buf.extend_from_slice(bytes);
            let tail = decode(&buf, out);
            buf.drain(..tail);
            self.pending = buf;
        }
    }

    /// Flushes the end of the stream: an incomplete character left over becomes U+FFFD.
    pub fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            out.push(char::REPLACEMENT_CHARACTER);
            self.pending.clear();
        }
    }
}

/// Decodes `b` into `out`, replacing invalid sequences with U+FFFD, and returns the offset
/// of a trailing incomplete character that more bytes could still complete (`b.len()` if
/// there is none).
fn decode(mut b: &[u8], out: &mut String) -> usize {
    let total = b.len();
    loop {
        match std::str::from_utf8(b) {
            Ok(s) => {
                out.push_str(s);
                return total;
            }
            Err(e) => {
                let (valid, rest) = b.split_at(e.valid_up_to());
                // `valid_up_to` promises this prefix is valid UTF-8.
                if let Ok(s) = std::str::from_utf8(valid) {
                    out.push_str(s);
                }
                match e.error_len() {
                    // The input ends inside a character: wait for its other bytes.
                    None => return total - rest.len(),
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        b = &rest[n..];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> String {
        let mut s = Utf8Stream::new();
        let mut out = String::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn split_character_is_emitted_once_whole() {
        // "é" is C3 A9; "€" is E2 82 AC.
        let mut s = Utf8Stream::new();
        let mut out = String::new();
        s.push(b"a\xC3", &mut out);
        assert_eq!(out, "a");
        s.push(b"\xA9\xE2", &mut out);
        assert_eq!(out, "aé");
        s.push(b"\x82", &mut out);
        assert_eq!(out, "aé");
        s.push(b"\xAC!", &mut out);
        assert_eq!(out, "aé€!");
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        assert_eq!(run(&[b"a\xFFb"]), "a\u{FFFD}b");
        // A lead byte followed by a non-continuation byte in the next push.
        assert_eq!(run(&[b"\xE2\x82", b"x"]), "\u{FFFD}x");
        // An incomplete character at the end of the stream.
        assert_eq!(run(&[b"ok\xF0\x9F"]), "ok\u{FFFD}");
    }
}
