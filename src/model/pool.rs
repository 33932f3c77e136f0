//! The fork-join pool of pdbench's own kernels, built to degrade gently
//! when another process takes a core.
//!
//! candle's barrier pool hands every worker a share and waits for each to
//! check in, so a worker that the scheduler has put behind another
//! process's thread holds up every matmul until its core comes back (a
//! whole time slice, milliseconds, per barrier). Here the caller waits
//! only for chunks that a worker has actually taken: a worker that has not
//! woken by the time the caller has taken the rest does no part of that
//! call, and the caller does not wait for it. Chunks are small, so a
//! worker preempted mid-chunk holds back little.
//!
//! Results do not depend on which thread computes a chunk: every chunk is
//! the same code over the same items, so the bits are the same at any
//! thread count and any interleaving.

use std::cell::UnsafeCell;
use std::hint::spin_loop;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;

/// Spins before a waiting worker parks: long enough to catch the next
/// call of a decode step (microseconds apart), short enough not to burn
/// a shared core between steps.
const WORKER_SPINS: u32 = 20_000;
/// Chunks per thread in a call: more chunks, less work held by a worker
/// that is preempted mid-chunk.
const CHUNKS_PER_THREAD: usize = 16;

static NOOP: fn(Range<usize>) = |_| {};

struct Job {
    f: *const (dyn Fn(Range<usize>) + Sync),
    n_items: usize,
    chunk: usize,
}

struct Shared {
    /// Even: a call is open for workers to join; odd: closed. Advanced by
    /// 1 on each open and each close.
    epoch: AtomicUsize,
    job: UnsafeCell<Job>,
    cursor: AtomicUsize,
    done_items: AtomicUsize,
    /// Workers between joining a call and leaving it.
    active: AtomicUsize,
    /// Workers parked (not spinning): the caller unparks only then.
    parked: AtomicUsize,
    stop: AtomicBool,
    panicked: AtomicBool,
}

// SAFETY: `job` is written only by the caller that holds `call`, while
// the call is closed and no worker is active (see `execute`).
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: &'static Shared,
    workers: Vec<Thread>,
    call: Mutex<()>,
}

thread_local! {
    static IN_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Pool {
    /// A pool of `threads` in all: the caller and `threads - 1` workers.
    pub fn new(threads: usize) -> Self {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            epoch: AtomicUsize::new(1),
            job: UnsafeCell::new(Job {
                f: &NOOP as &(dyn Fn(Range<usize>) + Sync),
                n_items: 0,
                chunk: 1,
            }),
            cursor: AtomicUsize::new(0),
            done_items: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            parked: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        }));
        let workers = (1..threads.max(1))
            .map(|i| {
                std::thread::Builder::new()
                    .name(format!("pdbench-pool-{i}"))
                    .spawn(move || worker(shared))
                    .expect("spawning a pool worker")
                    .thread()
                    .clone()
            })
            .collect();
        Self {
            shared,
            workers,
            call: Mutex::new(()),
        }
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f` on disjoint ranges covering `0..n_items`, on the caller
    /// and whichever workers join in time; returns when every item is
    /// done.
    pub fn execute_chunked<F: Fn(Range<usize>) + Sync>(&self, n_items: usize, f: F) {
        if n_items == 0 {
            return;
        }
        if self.workers.is_empty() || n_items == 1 || IN_POOL.with(|c| c.get()) {
            f(0..n_items);
            return;
        }
        let _call = self.call.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.shared;
        let chunk = n_items.div_ceil(self.threads() * CHUNKS_PER_THREAD).max(1);
        let dyn_f: &(dyn Fn(Range<usize>) + Sync) = &f;
        // SAFETY: the call is closed (epoch odd) and no worker is active,
        // so no one reads the job while it is written; the pointer's
        // lifetime is erased, and `execute` does not return before every
        // worker that could read it has left.
        unsafe {
            *s.job.get() = Job {
                f: std::mem::transmute::<
                    &(dyn Fn(Range<usize>) + Sync),
                    &'static (dyn Fn(Range<usize>) + Sync),
                >(dyn_f),
                n_items,
                chunk,
            };
        }
        s.cursor.store(0, Ordering::Relaxed);
        s.done_items.store(0, Ordering::Relaxed);
        let open = s.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        debug_assert!(open % 2 == 0);
        if s.parked.load(Ordering::SeqCst) > 0 {
            for w in &self.workers {
                w.unpark();
            }
        }
        // The caller takes chunks like any worker.
        IN_POOL.with(|c| c.set(true));
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_chunks(s, dyn_f, n_items, chunk)
        }));
        IN_POOL.with(|c| c.set(false));
        if mine.is_err() {
            drain(s, n_items, chunk);
        }
        // Wait for the chunks workers took, then close the call and wait
        // for workers that joined it to leave.
        let mut spins = 0u32;
        while s.done_items.load(Ordering::Acquire) < n_items {
            backoff(&mut spins);
        }
        s.epoch.fetch_add(1, Ordering::SeqCst);
        while s.active.load(Ordering::SeqCst) != 0 {
            backoff(&mut spins);
        }
        // Cleared before any unwinding, so no later call inherits it.
        let worker_panicked = s.panicked.swap(false, Ordering::SeqCst);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if worker_panicked {
            panic!("a pool worker panicked");
        }
    }
}

/// Spin, then yield the CPU: a caller waiting on a preempted worker should
/// not keep its own core from the scheduler.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 4_000 {
        spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Takes chunks until none is left.
fn run_chunks(s: &Shared, f: &(dyn Fn(Range<usize>) + Sync), n_items: usize, chunk: usize) {
    loop {
        let start = s.cursor.fetch_add(chunk, Ordering::Relaxed);
        if start >= n_items {
            return;
        }
        let end = n_items.min(start + chunk);
        // Count the chunk done even if it panics, so the caller returns
        // (and reports the panic).
        struct Done<'a>(&'a AtomicUsize, usize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_add(self.1, Ordering::Release);
            }
        }
        let _done = Done(&s.done_items, end - start);
        f(start..end);
    }
}

/// After a panic: takes the chunks left and counts them done unrun, so
/// the caller does not wait for them.
fn drain(s: &Shared, n_items: usize, chunk: usize) {
    loop {
        let start = s.cursor.fetch_add(chunk, Ordering::Relaxed);
        if start >= n_items {
            return;
        }
        s.done_items
            .fetch_add(n_items.min(start + chunk) - start, Ordering::Release);
    }
}

fn worker(s: &'static Shared) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = s.epoch.load(Ordering::Acquire);
    loop {
        // Wait for a call newer than the last one seen.
        let mut spins = 0u32;
        let e = loop {
            if s.stop.load(Ordering::Relaxed) {
                return;
            }
            let e = s.epoch.load(Ordering::Acquire);
            if e % 2 == 0 && e != seen {
                break e;
            }
            spins += 1;
            if spins < WORKER_SPINS {
                spin_loop();
            } else {
                s.parked.fetch_add(1, Ordering::SeqCst);
                // Re-check after announcing: a call opened in between
                // saw no parked worker and sent no unpark.
                let e = s.epoch.load(Ordering::SeqCst);
                if !(e % 2 == 0 && e != seen) {
                    std::thread::park();
                }
                s.parked.fetch_sub(1, Ordering::SeqCst);
                spins = 0;
            }
        };
        seen = e;
        // Join: announce, then check the call is still open. The caller
        // closes, then waits for `active` to drain, so a worker that
        // joined in time finishes before the job goes away, and one that
        // was late backs out without touching it.
        s.active.fetch_add(1, Ordering::SeqCst);
        if s.epoch.load(Ordering::SeqCst) == e {
            // SAFETY: the call is open and this worker is counted active,
            // so the job and its closure live until it leaves.
            let job = unsafe { &*s.job.get() };
            let (f, n, chunk) = (unsafe { &*job.f }, job.n_items, job.chunk);
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_chunks(s, f, n, chunk)))
                .is_err()
            {
                s.panicked.store(true, Ordering::SeqCst);
                drain(s, n, chunk);
            }
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The process's pool, sized like candle's (`CANDLE_NUM_THREADS`, else
/// `RAYON_NUM_THREADS`, else candle's default) on first use.
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let candle = std::env::var("CANDLE_NUM_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n > 0);
        Pool::new(candle.unwrap_or_else(candle_core::utils::get_num_threads))
    })
}

/// Runs `f` over `0..n_items` on this pool, or on candle's barrier pool
/// when `PDBENCH_POOL=candle` (for side-by-side benchmarks of the two:
/// scripts/degradation.sh). Either gives the same bits.
pub fn execute_chunked<F: Fn(Range<usize>) + Sync>(n_items: usize, f: F) {
    static CANDLE: OnceLock<bool> = OnceLock::new();
    if *CANDLE.get_or_init(|| std::env::var("PDBENCH_POOL").is_ok_and(|v| v == "candle")) {
        candle_core::utils::barrier_pool().execute_chunked(n_items, f)
    } else {
        pool().execute_chunked(n_items, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_at_any_width() {
        for threads in [1, 2, 3, 5] {
            let p = Pool::new(threads);
            for n in [0, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..20 {
                    p.execute_chunked(n, |r| {
                        for i in r {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 20),
                    "{threads} {n}"
                );
            }
        }
    }

    #[test]
    fn nested_calls_run_inline() {
        let p = Pool::new(2);
        let total = AtomicUsize::new(0);
        p.execute_chunked(4, |r| {
            for _ in r {
                p.execute_chunked(3, |r2| {
                    total.fetch_add(r2.len(), Ordering::Relaxed);
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn a_panic_in_a_chunk_reaches_the_caller_and_the_pool_goes_on() {
        let p = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.execute_chunked(64, |r| {
                if r.contains(&63) {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        p.execute_chunked(64, |r| {
            n.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 64);
    }
}
