//! Writing to stdout, where a closed pipe (`wick gen | head -c 10`) is a normal way to stop.

use std::io::{self, Write};

/// Stdout, line-buffered by hand so that streamed text appears as it is generated.
pub struct Stdout {
    inner: io::Stdout,
    closed: bool,
}

impl Stdout {
    pub fn new() -> Stdout {
        Stdout {
            inner: io::stdout(),
            closed: false,
        }
    }

    /// True once the reader has gone away; callers stop generating then.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Writes and flushes `s`. A broken pipe marks the output closed instead of failing.
    pub fn write(&mut self, s: &str) -> io::Result<()> {
        if self.closed || s.is_empty() {
            return Ok(());
        }
        let mut lock = self.inner.lock();
        match lock.write_all(s.as_bytes()).and_then(|_| lock.flush()) {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            r => r,
        }
    }
}
