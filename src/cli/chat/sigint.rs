//! Ctrl-C while a reply is generated stops the reply, not the program.
//!
//! The handler is installed only for the time of a reply: at the prompt, rustyline reads
//! Ctrl-C as a key, and before the chat starts (loading a model) Ctrl-C should still end wick.

use std::sync::atomic::{AtomicBool, Ordering};

static FIRED: AtomicBool = AtomicBool::new(false);

/// While alive, SIGINT sets a flag instead of ending the process.
pub struct Sigint {
    #[cfg(unix)]
    old: libc::sigaction,
}

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    // Only an atomic store: anything else is unsafe in a signal handler.
    FIRED.store(true, Ordering::SeqCst);
}

impl Sigint {
    pub fn catch() -> Sigint {
        FIRED.store(false, Ordering::SeqCst);
        #[cfg(unix)]
        {
            // SAFETY: sigaction is called with valid, initialized structs, and the handler
            // only stores to an atomic.
            unsafe {
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
                // Restart interrupted writes to the terminal instead of failing them.
                new.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut new.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(libc::SIGINT, &new, &mut old);
                Sigint { old }
            }
        }
        #[cfg(not(unix))]
        Sigint {}
    }

    /// True once Ctrl-C was pressed since `catch`.
    pub fn fired(&self) -> bool {
        FIRED.load(Ordering::SeqCst)
    }
}

impl Drop for Sigint {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: restores the action saved by `catch`.
        unsafe {
            libc::sigaction(libc::SIGINT, &self.old, std::ptr::null_mut());
        }
    }
}
