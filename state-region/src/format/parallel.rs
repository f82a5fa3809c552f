//! Hashing independent sections on several cores.
//!
//! SHA-256 is sequential within one section, but different sections' digests are
//! independent. A producer or consumer that has pieces of several sections in hand (the
//! payloads one `read_data` or `write_data` call carries) hands them to [`spread`], which
//! runs them on this thread and on the pool's workers at once.
//!
//! The pool is a few threads started on first use and parked between batches. The caller
//! publishes a batch, wakes them, and works on the batch itself: every thread claims jobs
//! one at a time from a shared counter, so a worker that the scheduler runs late (the
//! machine is shared) finds the jobs done rather than holding the caller up; the caller
//! waits only for jobs a worker actually took. One batch uses the pool at a time; a
//! concurrent caller hashes its batch on its own thread.

use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

/// Below this many bytes in total a batch is hashed on the calling thread: waking the
/// pool costs more than it saves.
pub const PARALLEL_MIN: usize = 128 << 10;

/// How long a worker looks for the next batch before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// After a batch whose jobs all ran on the caller's thread (the workers got no core in
/// time), this many batches run there alone before the pool is tried again: on a machine
/// whose cores are busy with other work, waking workers only costs.
const SKIP_AFTER_IDLE: u32 = 16;

/// At most this many threads (the caller's included) hash one batch.
const MAX_THREADS: usize = 4;

/// Threads a batch is spread over: the cores this process may use, at most [`MAX_THREADS`]
/// (read once; `available_parallelism` reads cgroup files).
pub fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_THREADS)
    })
}

/// Run `work` on every job, on this thread and on the pool's workers at once; returns once
/// all are done. Threads claim jobs one at a time, largest first, so a job list of uneven
/// sizes still balances. With one job, one core, or less than [`PARALLEL_MIN`] bytes (by
/// `weight`) in total, everything runs here.
pub fn spread<J: Send>(jobs: &mut [J], weight: impl Fn(&J) -> usize, work: impl Fn(&mut J) + Sync) {
    spread_with(jobs, weight, work, || ());
}

/// [`spread`], with `first` run on this thread while the workers start on the jobs (this
/// thread joins them once `first` returns); returns what `first` returns. `first` may use
/// what the jobs do not borrow, such as the sink a parser copies payloads into while their
/// digests are computed.
pub fn spread_with<J: Send, R>(
    jobs: &mut [J],
    weight: impl Fn(&J) -> usize,
    work: impl Fn(&mut J) + Sync,
    first: impl FnOnce() -> R,
) -> R {
    let total: usize = jobs.iter().map(&weight).sum();
    if threads() < 2 || jobs.len() < 2 || total < PARALLEL_MIN {
        return serial(jobs, &work, first);
    }
    let (pool, workers) = pool();
    // The workers took nothing of a recent batch (no core was free for them): run here for
    // a while rather than wait on a worker the scheduler may run late.
    if pool
        .skip
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
    {
        return serial(jobs, &work, first);
    }
    // Another batch has the pool: this one runs here.
    let _busy = match pool.busy.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => return serial(jobs, &work, first),
    };
    if workers == 0 {
        return serial(jobs, &work, first);
    }
    // Largest first, so that the small ones even out the end.
    let mut order: Vec<&mut J> = jobs.iter_mut().collect();
    order.sort_by_key(|j| std::cmp::Reverse(weight(j)));
    let cells: Vec<Mutex<&mut J>> = order.into_iter().map(Mutex::new).collect();
    let next = AtomicUsize::new(0);
    let run = || {
        let mut claimed = 0;
        while let Some(cell) = cells.get(next.fetch_add(1, Ordering::Relaxed)) {
            // Each index is claimed once, so the lock is never contended.
            let mut job = cell.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut job);
            claimed += 1;
        }
        claimed
    };
    let offer = || {
        run();
    };
    let published = pool.publish(&offer);
    let r = first();
    let mine = run();
    published.finish();
    if mine == cells.len() {
        pool.skip.store(SKIP_AFTER_IDLE, Ordering::Relaxed);
    }
    r
}

/// [`spread_with`] on this thread alone.
fn serial<J, R>(jobs: &mut [J], work: &impl Fn(&mut J), first: impl FnOnce() -> R) -> R {
    let r = first();
    jobs.iter_mut().for_each(work);
    r
}

/// A type-erased batch: the claiming loop of one [`spread_with`] call.
#[derive(Clone, Copy)]
struct Task(*const (dyn Fn() + Sync + 'static));

// SAFETY: the pointee is `Sync` (workers only call it through `&`), and `Published`
// guarantees it outlives every use (see there).
unsafe impl Send for Task {}

#[derive(Default)]
struct State {
    /// The batch on offer (`None` between batches).
    task: Option<Task>,
    /// Counts batches, so a worker takes each one once.
    round: u64,
    /// Workers inside the current task.
    active: usize,
    /// A worker's task panicked.
    panicked: bool,
}

struct Pool {
    state: Mutex<State>,
    /// Workers wait here for a batch.
    wake: Condvar,
    /// The caller waits here for the workers to leave the batch.
    idle: Condvar,
    /// Held by the one caller using the pool.
    busy: Mutex<()>,
    /// The latest round offered (a copy of `State::round` that workers poll unlocked).
    offered: AtomicU64,
    /// Batches still to run on the caller's thread alone (see [`SKIP_AFTER_IDLE`]).
    skip: AtomicU32,
}

/// The pool, and how many workers it has (started on first use).
fn pool() -> (&'static Pool, usize) {
    static POOL: OnceLock<Pool> = OnceLock::new();
    static WORKERS: OnceLock<usize> = OnceLock::new();
    let pool = POOL.get_or_init(|| Pool {
        state: Mutex::default(),
        wake: Condvar::new(),
        idle: Condvar::new(),
        busy: Mutex::new(()),
        offered: AtomicU64::new(0),
        skip: AtomicU32::new(0),
    });
    let workers = *WORKERS.get_or_init(|| {
        (1..threads())
            .filter(|i| {
                thread::Builder::new()
                    .name(format!("ctx-hash-{i}"))
                    .spawn(move || pool.work())
                    .is_ok()
            })
            .count()
    });
    (pool, workers)
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A worker: take each batch once, run its claiming loop, leave it.
    fn work(&self) {
        let mut seen = 0;
        loop {
            // Batches come back to back while a stream is read or written: look for the
            // next one for a moment before sleeping, so that it starts without a wake-up.
            let spin = Instant::now();
            while self.offered.load(Ordering::Acquire) == seen && spin.elapsed() < SPIN {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            }
            let task = {
                let mut st = self.lock();
                loop {
                    match st.task {
                        Some(t) if st.round != seen => {
                            seen = st.round;
                            st.active += 1;
                            break t;
                        }
                        _ => st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner),
                    }
                }
            };
            // SAFETY: `task` was on offer and `active` was raised in the same critical
            // section; the caller takes it off offer and waits for `active` to drop to 0
            // before its borrow ends (`Published::finish`, also on unwinding), so the
            // closure is alive for this whole call.
            let ok = panic::catch_unwind(AssertUnwindSafe(|| unsafe { (*task.0)() })).is_ok();
            let mut st = self.lock();
            st.active -= 1;
            st.panicked |= !ok;
            if st.active == 0 {
                self.idle.notify_all();
            }
        }
    }

    /// Offer `run` to the workers until the returned guard finishes.
    fn publish<'a>(&'a self, run: &'a (dyn Fn() + Sync + 'a)) -> Published<'a> {
        // SAFETY: only the lifetime is erased; `Published` takes the pointer off offer and
        // waits until no worker uses it before `'a` ends.
        let task: &'static (dyn Fn() + Sync + 'static) = unsafe { std::mem::transmute(run) };
        let mut st = self.lock();
        st.task = Some(Task(task));
        st.round = st.round.wrapping_add(1);
        self.offered.store(st.round, Ordering::Release);
        drop(st);
        self.wake.notify_all();
        Published {
            pool: self,
            done: false,
            _run: std::marker::PhantomData,
        }
    }
}

/// A batch on offer; finishing (or dropping) it takes it off offer and waits for the
/// workers that took it.
struct Published<'a> {
    pool: &'a Pool,
    done: bool,
    _run: std::marker::PhantomData<&'a ()>,
}

impl Published<'_> {
    /// Take the batch off offer, wait for the workers in it; re-raise a worker's panic.
    fn finish(mut self) {
        if self.withdraw() {
            panic!("a context hashing worker panicked");
        }
    }

    fn withdraw(&mut self) -> bool {
        self.done = true;
        let mut st = self.pool.lock();
        st.task = None;
        while st.active > 0 {
            st = self
                .pool
                .idle
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
        std::mem::take(&mut st.panicked)
    }
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.withdraw();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn every_job_runs_once_with_the_same_result_as_serially() {
        for sizes in [
            vec![],
            vec![1usize],
            vec![300 << 10],
            vec![200 << 10, 10, 150 << 10, 1, 0, 90 << 10],
            vec![64 << 10; 9],
        ] {
            let data: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|k| (k * 31 + i) as u8).collect())
                .collect();
            let mut jobs: Vec<(Sha256, &[u8], u32)> = data
                .iter()
                .map(|d| (Sha256::new(), d.as_slice(), 0))
                .collect();
            let first = spread_with(
                &mut jobs,
                |j| j.1.len(),
                |j| {
                    j.0.update(j.1);
                    j.2 += 1;
                },
                || 7,
            );
            assert_eq!(first, 7);
            for (j, d) in jobs.into_iter().zip(&data) {
                assert_eq!(j.2, 1);
                assert_eq!(j.0.finalize(), Sha256::digest(d));
            }
        }
    }
}
