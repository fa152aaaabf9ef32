//! A persistent pool of worker threads for the CPU backend.
//!
//! A decode step dispatches a few hundred small jobs (one per matmul), so the cost of waking
//! workers matters more than anything else here: workers spin on a generation counter for a
//! short while before they sleep on a condition variable, and the caller takes a share of
//! every job itself instead of waiting idle.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps. Long enough to bridge the gap between two
/// matmuls of one token, short enough not to burn a core between tokens of a slow consumer.
const SPIN: Duration = Duration::from_micros(200);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// The current job, lifetime-erased; valid while `remaining > 0` for its generation.
    job: UnsafeCell<Option<*const Job>>,
    generation: AtomicU64,
    remaining: AtomicUsize,
    shutdown: AtomicBool,
    /// Workers asleep on `wake` (or about to be): a job is only announced through the
    /// condition variable, a system call, when one is.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the dispatching thread while no worker reads it (all
// workers have finished the previous generation), and read by workers only after they observe
// the new generation, which is published with Release/Acquire ordering.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes callers: one job at a time.
    lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `n_threads` in all, the calling thread included.
    pub fn new(n_threads: usize) -> ThreadPool {
        let n = n_threads.max(1);
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            generation: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("wick-worker-{i}"))
                    .spawn(move || worker(&s, i))
                    .expect("spawn a worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            lock: Mutex::new(()),
        }
    }

    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(i)` for every thread index `i` in `0..n_threads()`, in parallel, and returns
    /// when all have finished. The caller runs `f(0)`.
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let job: &(dyn Fn(usize) + Sync + '_) = &f;
        // SAFETY: erase the lifetime; this function does not return until every worker has
        // finished with the job (`remaining` reaches zero), so `f` outlives every use.
        let job: *const Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(job) };
        // SAFETY: no worker reads `job` now: the previous generation has fully completed.
        unsafe { *s.job.get() = Some(job) };
        s.remaining.store(self.workers.len(), Ordering::Relaxed);
        // SeqCst with the sleeper's count and check in `worker`: either this sees it
        // counted, and wakes it under the lock it waits with, or it sees this generation
        // and does not wait.
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        f(0);
        while s.remaining.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::Release);
        {
            let _g = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Spin, then sleep, until a new generation is published.
        let start = Instant::now();
        let mut gen = s.generation.load(Ordering::Acquire);
        while gen == seen {
            if start.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                let g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                if s.generation.load(Ordering::SeqCst) == seen {
                    let _g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            gen = s.generation.load(Ordering::Acquire);
        }
        seen = gen;
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the job was stored before the generation was bumped (Release/Acquire),
        // and stays valid until this worker decrements `remaining`.
        if let Some(job) = unsafe { *s.job.get() } {
            unsafe { (*job)(index) };
        }
        s.remaining.fetch_sub(1, Ordering::Release);
    }
}

/// The half-open range of `0..n` that thread `i` of `t` takes, in whole multiples of `step`
/// so that SIMD kernels see aligned row groups.
pub fn split(n: usize, i: usize, t: usize, step: usize) -> std::ops::Range<usize> {
    let units = n.div_ceil(step);
    let lo = (units * i / t * step).min(n);
    let hi = (units * (i + 1) / t * step).min(n);
    lo..hi
}

/// A raw pointer that threads may share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub struct SharedMut<T>(*mut T);

// SAFETY: users uphold that threads touch disjoint elements.
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub fn new(s: &mut [T]) -> SharedMut<T> {
        SharedMut(s.as_mut_ptr())
    }

    /// # Safety
    /// `start..start + len` must be inside the original slice, and no other thread may
    /// access those elements while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }

    /// # Safety
    /// `start` must be inside the original slice.
    pub unsafe fn ptr(&self, start: usize) -> *mut T {
        self.0.add(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_once_per_job() {
        let pool = ThreadPool::new(3);
        let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..1000 {
            pool.run(|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        for h in &hits {
            assert_eq!(h.load(Ordering::Relaxed), 1000);
        }
    }

    #[test]
    fn workers_wake_after_sleeping() {
        let pool = ThreadPool::new(2);
        let n = AtomicUsize::new(0);
        std::thread::sleep(SPIN * 5);
        pool.run(|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn split_covers_everything_once() {
        for n in [0, 1, 7, 64, 100, 1000] {
            for t in 1..5 {
                let mut covered = vec![0; n];
                for i in 0..t {
                    let r = split(n, i, t, 4);
                    assert!(r.start.is_multiple_of(4) || r.start == n);
                    for j in r {
                        covered[j] += 1;
                    }
                }
                assert!(covered.iter().all(|&c| c == 1), "n {n} t {t}");
            }
        }
    }
}
