//! A tiny data-parallel runtime: `parallel_for` over task indices on a persistent worker pool.
//!
//! Decode issues hundreds of small kernel calls per token, each a few microseconds to a few
//! hundred microseconds long, so spawning threads per call (tens of microseconds each) would cost
//! more than the work. Instead `num_threads() - 1` workers are started on first use and live for
//! the rest of the process; the calling thread always takes part in its own job.
//!
//! Protocol (one job at a time; a caller that finds the pool busy runs its job inline):
//! 1. the caller publishes a pointer to a `Job` on its own stack and bumps `epoch`;
//! 2. workers that notice the new epoch register in `in_flight`, re-check that a job is still
//!    published, and claim task indices from the job's atomic counter until none are left;
//! 3. once the caller has seen every index claimed, it withdraws the pointer and waits until
//!    `in_flight` is zero, so no worker can touch the `Job` after `parallel_for` returns.
//!
//! Workers spin briefly after a job (the next one usually follows within microseconds), then
//! sleep on a condition variable so that an idle process costs no CPU.

use std::any::Any;
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before sleeping. Long enough to bridge the
/// gap between two kernels of one decode step, short enough not to burn a core when idle.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(200);

/// The number of threads kernels should split work across: `IMPLICIT_THREADS` if set to a
/// positive integer, else the machine's available parallelism. Read once, then cached.
pub fn num_threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        let from_env = std::env::var("IMPLICIT_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        match from_env {
            Some(n) if n > 0 => n,
            _ => thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    })
}

thread_local! {
    /// True on pool workers and on a caller while it runs its job's tasks: a `parallel_for`
    /// issued from inside a task then runs inline instead of waiting on a pool it occupies.
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// One published job. Lives on the caller's stack for the duration of `parallel_for`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n_tasks: usize,
    /// Next task index to hand out.
    next: AtomicUsize,
    /// Set by the first panicking task; remaining unclaimed tasks are then skipped.
    panicked: AtomicBool,
    payload: Mutex<Option<Box<dyn Any + Send>>>,
    /// The caller, woken by the last worker to leave.
    caller: Thread,
}

impl Job<'_> {
    /// Claims and runs tasks until none are left. Never unwinds: a task's panic is stored.
    fn run_tasks(&self) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= self.n_tasks || self.panicked.load(SeqCst) {
                return;
            }
            if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| (self.f)(i))) {
                self.panicked.store(true, SeqCst);
                let mut slot = self.payload.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(p);
            }
        }
    }
}

struct Pool {
    workers: usize,
    /// Held (true) while a caller owns the pool.
    busy: AtomicBool,
    /// The published job, or null. Points at a `Job<'_>` with its lifetime erased.
    job: AtomicPtr<Job<'static>>,
    /// Bumped once per job; workers compare it to the last value they handled.
    epoch: AtomicUsize,
    /// Workers currently holding a reference to the published job.
    in_flight: AtomicUsize,
    /// Workers asleep (or about to sleep) on `wake`.
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers: num_threads().saturating_sub(1),
            busy: AtomicBool::new(false),
            job: AtomicPtr::new(std::ptr::null_mut()),
            epoch: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for w in 0..pool.workers {
            thread::Builder::new()
                .name(format!("implicit-worker-{w}"))
                .spawn(move || worker_loop(pool))
                .expect("failed to spawn a worker thread");
        }
        pool
    })
}

fn worker_loop(pool: &'static Pool) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = 0usize;
    loop {
        seen = wait_for_epoch_change(pool, seen);
        pool.in_flight.fetch_add(1, SeqCst);
        let ptr = pool.job.load(SeqCst);
        let mut caller = None;
        if !ptr.is_null() {
            // SAFETY: we registered in `in_flight` before loading a non-null `job`; the caller
            // withdraws the pointer and then waits for `in_flight == 0` before its `Job` goes
            // out of scope (SeqCst orders our registration before its wait), so the `Job` is
            // alive until our `fetch_sub` below.
            let job = unsafe { &*ptr };
            job.run_tasks();
            caller = Some(job.caller.clone());
        }
        if pool.in_flight.fetch_sub(1, SeqCst) == 1 {
            // Possibly the last one out: wake the caller (a spare unpark is harmless).
            if let Some(t) = caller {
                t.unpark();
            }
        }
    }
}

/// Spins, then sleeps, until `epoch` differs from `seen`; returns the new value.
fn wait_for_epoch_change(pool: &Pool, seen: usize) -> usize {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let e = pool.epoch.load(SeqCst);
        if e != seen {
            return e;
        }
        std::hint::spin_loop();
        spins += 1;
        if spins.is_multiple_of(64) && start.elapsed() > SPIN_BEFORE_SLEEP {
            break;
        }
    }
    let mut guard = pool.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
    pool.sleepers.fetch_add(1, SeqCst);
    // Checked under the lock after announcing ourselves: a caller that bumps the epoch either
    // sees `sleepers > 0` and notifies under the lock, or we see its new epoch here.
    while pool.epoch.load(SeqCst) == seen {
        guard = pool.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
    }
    pool.sleepers.fetch_sub(1, SeqCst);
    pool.epoch.load(SeqCst)
}

/// Runs `f(i)` for every `i` in `0..n_tasks`, spread over `num_threads()` threads (the caller
/// included), and returns when all have finished. Tasks are claimed dynamically, so uneven
/// tasks balance. Runs inline when there is one task or one thread, when called from inside a
/// task, or when another thread currently owns the pool. If a task panics, the remaining
/// unclaimed tasks are skipped and the panic is re-raised here once every running task is done.
pub fn parallel_for<F: Fn(usize) + Sync>(n_tasks: usize, f: F) {
    if n_tasks <= 1 || num_threads() <= 1 || IN_POOL.with(|c| c.get()) {
        (0..n_tasks).for_each(f);
        return;
    }
    let pool = pool();
    if pool
        .busy
        .compare_exchange(false, true, SeqCst, SeqCst)
        .is_err()
    {
        (0..n_tasks).for_each(f);
        return;
    }
    let job = Job {
        f: &f,
        n_tasks,
        next: AtomicUsize::new(0),
        panicked: AtomicBool::new(false),
        payload: Mutex::new(None),
        caller: thread::current(),
    };
    run_published(pool, &job);
    pool.busy.store(false, SeqCst);
    let payload = job.payload.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = payload {
        panic::resume_unwind(p);
    }
}

/// Publishes `job`, takes part in it, then withdraws it and waits for every worker to leave.
/// Nothing here unwinds (tasks' panics are caught), so the wait always happens.
fn run_published(pool: &Pool, job: &Job<'_>) {
    // Erase the lifetime: workers only dereference the pointer while registered in
    // `in_flight`, and we do not return before `in_flight` drops to zero after withdrawal.
    let ptr = std::ptr::from_ref(job).cast::<Job<'static>>().cast_mut();
    pool.job.store(ptr, SeqCst);
    pool.epoch.fetch_add(1, SeqCst);
    if pool.sleepers.load(SeqCst) > 0 {
        let _guard = pool.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
        pool.wake.notify_all();
    }
    IN_POOL.with(|c| c.set(true));
    job.run_tasks();
    IN_POOL.with(|c| c.set(false));
    // Every index is claimed; stop new workers from joining, then wait for those inside.
    pool.job.store(std::ptr::null_mut(), SeqCst);
    let mut spins = 0u32;
    while pool.in_flight.load(SeqCst) != 0 {
        if spins < 2000 {
            std::hint::spin_loop();
            spins += 1;
        } else {
            // Woken by the last worker out; spurious wake-ups just re-check.
            thread::park_timeout(Duration::from_millis(1));
        }
    }
}

/// Splits `data` into consecutive chunks of `chunk` elements (the last may be shorter) and
/// runs `f(chunk_index, chunk)` for each in parallel.
pub fn parallel_chunks_mut<T: Send, F: Fn(usize, &mut [T]) + Sync>(
    data: &mut [T],
    chunk: usize,
    f: F,
) {
    assert!(
        chunk > 0,
        "parallel_chunks_mut: chunk size must be positive"
    );
    let len = data.len();
    let n_chunks = len.div_ceil(chunk);
    let base = SendPtr(data.as_mut_ptr());
    parallel_for(n_chunks, |i| {
        let start = i * chunk;
        let n = chunk.min(len - start);
        // SAFETY: chunk i covers [i*chunk, i*chunk + n) within `data`; distinct indices give
        // disjoint ranges and each index runs exactly once, so no two live `&mut` overlap. The
        // borrow of `data` outlives `parallel_for`, which returns only after all tasks end.
        let slice = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
        f(i, slice);
    });
}

/// A raw pointer that may cross threads; users guarantee disjoint access.
pub(crate) struct SendPtr<T>(pub(crate) *mut T);

// Manual impls: `derive` would demand `T: Copy`, but only the pointer is copied.
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Returns the pointer. A method (rather than field access) so closures capture the whole
    /// `Send + Sync` wrapper, not the raw pointer field.
    #[inline]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: `SendPtr` only carries an address; every dereference site justifies that the
// accesses from different threads are to disjoint elements of a `T: Send` buffer.
unsafe impl<T: Send> Send for SendPtr<T> {}
// SAFETY: as above; sharing the address is harmless, the writes are disjoint.
unsafe impl<T: Send> Sync for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn runs_every_index_once() {
        for n in [0usize, 1, 2, 3, 7, 100, 1000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            parallel_for(n, |i| {
                hits[i].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "n = {n}");
        }
    }

    #[test]
    fn many_small_calls() {
        let total = AtomicU64::new(0);
        for _ in 0..2000 {
            parallel_for(4, |i| {
                total.fetch_add(i as u64, SeqCst);
            });
        }
        assert_eq!(total.load(SeqCst), 2000 * 6);
    }

    #[test]
    fn nested_calls_run_inline() {
        let total = AtomicUsize::new(0);
        parallel_for(8, |_| {
            parallel_for(8, |j| {
                total.fetch_add(j, SeqCst);
            });
        });
        assert_eq!(total.load(SeqCst), 8 * 28);
    }

    #[test]
    fn concurrent_callers() {
        let total = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        parallel_for(16, |i| {
                            total.fetch_add(i, SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 4 * 200 * 120);
    }

    #[test]
    fn panic_propagates_after_tasks_finish() {
        let done = AtomicUsize::new(0);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            parallel_for(64, |i| {
                if i == 5 {
                    panic!("task five");
                }
                thread::sleep(Duration::from_micros(50));
                done.fetch_add(1, SeqCst);
            });
        }));
        let err = r.expect_err("the panic should reach the caller");
        assert_eq!(err.downcast_ref::<&str>(), Some(&"task five"));
        // The pool still works afterwards.
        let total = AtomicUsize::new(0);
        parallel_for(10, |i| {
            total.fetch_add(i, SeqCst);
        });
        assert_eq!(total.load(SeqCst), 45);
    }

    #[test]
    fn chunks_cover_data() {
        for (len, chunk) in [(0usize, 3usize), (10, 3), (9, 3), (1, 5), (1000, 7)] {
            let mut v = vec![0usize; len];
            parallel_chunks_mut(&mut v, chunk, |ci, s| {
                assert!(s.len() <= chunk && !s.is_empty());
                for (j, x) in s.iter_mut().enumerate() {
                    *x = ci * chunk + j + 1;
                }
            });
            assert!(
                v.iter().enumerate().all(|(i, &x)| x == i + 1),
                "len {len} chunk {chunk}"
            );
        }
    }

    #[test]
    fn num_threads_positive() {
        assert!(num_threads() >= 1);
    }
}
