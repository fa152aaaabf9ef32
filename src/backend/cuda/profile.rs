//! Per-op GPU timings for `WICK_PROFILE=1`: each op is bracketed by two events on the
//! stream, and the times are read back once the forward pass's results are copied to the
//! host. Decode steps then run op by op instead of as a recorded graph, so the figures
//! leave out what a graph saves in launch costs.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::ffi;

struct Event(*mut std::ffi::c_void);

impl Event {
    fn new() -> Option<Event> {
        let mut e = std::ptr::null_mut();
        // SAFETY: writes one handle.
        (unsafe { ffi::wick_event_create(&mut e) } == 0).then_some(Event(e))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: created by wick_event_create, destroyed once.
        unsafe { ffi::wick_event_destroy(self.0) };
    }
}

#[derive(Default)]
pub struct Profiler {
    /// Event pairs in use this pass, by op name; reused from `free` across passes.
    open: Vec<(String, Event, Event)>,
    free: Vec<(Event, Event)>,
    /// Total milliseconds and count per op name.
    totals: BTreeMap<String, (f64, usize)>,
}

pub struct Span<'p> {
    profiler: &'p RefCell<Profiler>,
    index: usize,
}

impl Profiler {
    /// Starts timing an op; the span's drop ends it.
    pub fn span<'p>(cell: &'p RefCell<Profiler>, name: String) -> Option<Span<'p>> {
        let mut p = cell.borrow_mut();
        let (a, b) = match p.free.pop() {
            Some(pair) => pair,
            None => (Event::new()?, Event::new()?),
        };
        // SAFETY: a valid event.
        unsafe { ffi::wick_event_record(a.0) };
        p.open.push((name, a, b));
        Some(Span {
            profiler: cell,
            index: p.open.len() - 1,
        })
    }

    /// Adds the times of the ops recorded so far (their work must have finished).
    pub fn collect(&mut self) {
        for (name, a, b) in self.open.drain(..) {
            let mut ms = 0f32;
            // SAFETY: both events were recorded and their work is done.
            if unsafe { ffi::wick_event_elapsed(a.0, b.0, &mut ms) } == 0 {
                let t = self.totals.entry(name).or_default();
                t.0 += ms as f64;
                t.1 += 1;
            }
            self.free.push((a, b));
        }
    }

    /// The table of totals, largest first, for stderr.
    pub fn report(&self) -> String {
        let all: f64 = self.totals.values().map(|t| t.0).sum();
        let mut rows: Vec<_> = self.totals.iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        let mut out = format!(
            "{:<44} {:>10} {:>8} {:>10} {:>6}\n",
            "op", "total ms", "calls", "us/call", "%"
        );
        for (name, (ms, n)) in rows {
            out += &format!(
                "{name:<44} {ms:>10.3} {n:>8} {:>10.2} {:>6.1}\n",
                ms * 1e3 / *n as f64,
                100.0 * ms / all.max(1e-12)
            );
        }
        out
    }
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        let p = self.profiler.borrow();
        // SAFETY: a valid event.
        unsafe { ffi::wick_event_record(p.open[self.index].2 .0) };
    }
}
