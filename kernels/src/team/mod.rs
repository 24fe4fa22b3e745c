//! A team of threads for the kernels of one call.
//!
//! A layer runs a dozen parallel kernels in a row (LayerNorm, products, attention,
//! quantization), each a few microseconds to a few milliseconds long. [`with_team`] makes the
//! calling thread the leader of a team for the length of its body: the leader and `threads - 1`
//! helper threads, which the crate keeps for that calling thread (spawned on first use, reused
//! by every later call from it, ended when it ends). Inside the body, every
//! [`for_parts`] call on the leader is one job of the team: the parts are claimed by index by
//! whoever is free, the leader included, and the call returns when all are done.
//!
//! * **Deterministic.** Parts are claimed by index, so the split of the work, and every
//!   result, is the same whoever runs which part.
//! * **Never waits for a particular thread.** A helper that is late (asleep, descheduled) just
//!   finds fewer parts left; the leader runs whatever nobody claimed.
//! * **Asleep when idle.** A waiting thread spins for 50 µs at most, then parks until the next
//!   job (or the end of its leader's thread) unparks it. Between calls, and during a serial
//!   stretch of a call, the helpers cost no CPU.
//! * **Sound for every caller.** The helpers are threads of their own, not jobs of a rayon
//!   pool, so nothing the leader waits on can be run by them or queued behind them. Inside a
//!   part (on the leader or a helper) `for_parts` runs its parts one after the other on that
//!   thread and `with_team` runs its body alone; inside a team's body a nested `with_team`
//!   shares the team. A panic in a part reaches the leader's caller after every other part of
//!   that job has finished.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use transformer_encoder_kernels::team::{for_parts, with_team};
//! let hits: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
//! with_team(2, || {
//!     for_parts(8, &|i| {
//!         hits[i].fetch_add(1, Ordering::Relaxed);
//!     })
//! });
//! assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
//! ```

mod gate;
mod sync;

use gate::{Gate, Helper, Seat};
use std::cell::{Cell, RefCell};
use sync::{Arc, AtomicUsize, Ordering};

/// The most threads a team has (the leader and 255 helpers); [`with_team`] clamps larger
/// requests to it.
pub const MAX_THREADS: usize = 256;

/// The largest job handed to the gate at once (claims past the end of a job must not wrap);
/// [`for_parts`] runs more parts as several jobs.
const MAX_JOB: usize = usize::MAX / 4;

/// A calling thread's team: the gate it shares with its helpers, and their handles.
struct Owner {
    gate: Arc<Gate>,
    helpers: Vec<Helper>,
}

impl Owner {
    fn new() -> Owner {
        Owner {
            gate: Arc::new(Gate::new()),
            helpers: Vec::new(),
        }
    }

    /// Spawn helpers until there are `n` (fewer if the system refuses a thread), and wait until
    /// each new one runs: a thread's start (its name, its thread-local state) allocates, and on
    /// a loaded machine a helper spawned by a call may only start during a later one, which
    /// would then allocate and wait on the scheduler (seen in CI: one allocation in 200 warm
    /// calls).
    fn grow(&mut self, n: usize) {
        if self.helpers.len() >= n {
            return;
        }
        let (started, before) = (Arc::new(AtomicUsize::new(0)), self.helpers.len());
        while self.helpers.len() < n {
            let index = self.helpers.len();
            let seat = Arc::new(Seat::default());
            let (gate, s, up) = (self.gate.clone(), seat.clone(), started.clone());
            let thread = sync::thread::Builder::new()
                .name(format!("transformer-encoder-helper-{index}"))
                .spawn(move || {
                    SEAT.with(|seat| seat.set(index + 1));
                    up.fetch_add(1, Ordering::Release);
                    drop(up);
                    gate.serve(index, &s)
                });
            match thread {
                Ok(handle) => self.helpers.push(Helper {
                    thread: handle.thread().clone(),
                    seat,
                }),
                Err(_) => break,
            }
        }
        while started.load(Ordering::Acquire) < self.helpers.len() - before {
            sync::thread::yield_now();
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.gate.shut_down(&self.helpers);
    }
}

/// What the current thread leads: its own team, and how many threads the innermost
/// `with_team` allows (`owner` null: none).
#[derive(Clone, Copy)]
struct Lead {
    owner: *const Owner,
    width: usize,
}

thread_local! {
    /// This thread's team, made when it first leads one.
    static OWNER: RefCell<Option<Owner>> = const { RefCell::new(None) };
    /// The team this thread is leading now, if any.
    static LEADING: Cell<Lead> = const {
        Cell::new(Lead { owner: std::ptr::null(), width: 0 })
    };
    /// This thread is running a part of a team's job.
    static IN_PART: Cell<bool> = const { Cell::new(false) };
    /// This thread's seat in its team: 0 for a leader (and any thread that is not a helper),
    /// `i + 1` for helper `i`.
    static SEAT: Cell<usize> = const { Cell::new(0) };
    /// Nanoseconds this thread has waited, as a leader, for helpers to finish their parts.
    static WAITED: Cell<u64> = const { Cell::new(0) };
}

/// Restores a thread-local value when dropped (also when unwinding).
struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<Cell<T>>, T);

impl<T: Copy + 'static> Drop for Restore<T> {
    fn drop(&mut self) {
        let _ = self.0.try_with(|c| c.set(self.1));
    }
}

/// Set a thread-local value until the guard drops.
fn set<T: Copy + 'static>(key: &'static std::thread::LocalKey<Cell<T>>, v: T) -> Restore<T> {
    Restore(key, key.with(|c| c.replace(v)))
}

/// Run `body` with a team of `threads` threads (clamped to [`MAX_THREADS`]): the calling
/// thread and `threads - 1` helpers. Kernels called inside `body` on this thread with
/// [`Par::Threads`](crate::Par) split their work on the team. With `threads <= 1`, inside a
/// part of a team's job, or if no helper thread can be had, `body` runs alone; inside another
/// `with_team`'s body it shares that team, with at most `threads` of its threads.
///
/// ```
/// use transformer_encoder_kernels::team::with_team;
/// let v = with_team(2, || 40 + 2);
/// assert_eq!(v, 42);
/// ```
pub fn with_team<R>(threads: usize, body: impl FnOnce() -> R) -> R {
    let threads = threads.min(MAX_THREADS);
    if threads <= 1 || IN_PART.with(Cell::get) {
        return body();
    }
    let lead = LEADING.with(Cell::get);
    if !lead.owner.is_null() {
        let _nested = set(
            &LEADING,
            Lead {
                owner: lead.owner,
                width: lead.width.min(threads),
            },
        );
        return body();
    }
    // Not leading and not in a part: nothing on this thread holds a pointer to its team, so it
    // may grow. The pointer taken here stays valid until the thread ends (the team is replaced
    // or grown only here, and only while no `with_team` of this thread is running).
    let owner = OWNER.try_with(|o| {
        let mut o = o.try_borrow_mut().ok()?;
        let owner = o.get_or_insert_with(Owner::new);
        owner.grow(threads - 1);
        (!owner.helpers.is_empty()).then_some(owner as *const Owner)
    });
    let Ok(Some(owner)) = owner else {
        return body();
    };
    let _lead = set(
        &LEADING,
        Lead {
            owner,
            width: threads,
        },
    );
    body()
}

/// Run parts `0..parts` of `f` and return when every part is done: on the team this thread
/// leads, if any; one after the other on this thread inside a part of a team's job; else on
/// rayon's current pool. A panic in a part is resumed here once every other part has finished.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use transformer_encoder_kernels::team::{for_parts, with_team};
/// let hits: Vec<AtomicUsize> = (0..5).map(|_| AtomicUsize::new(0)).collect();
/// with_team(2, || for_parts(5, &|i| { hits[i].fetch_add(1, Ordering::Relaxed); }));
/// assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
/// ```
pub fn for_parts(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 || IN_PART.with(Cell::get) {
        (0..parts).for_each(f);
        return;
    }
    let lead = LEADING.with(Cell::get);
    if lead.owner.is_null() {
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(f);
        return;
    }
    // SAFETY: LEADING points to this thread's own team, set by an enclosing `with_team` on this
    // thread; the team lives in this thread's OWNER, which is neither dropped nor changed while
    // that `with_team` runs (see `with_team`). Only shared references are made from it.
    let owner = unsafe { &*lead.owner };
    let helpers = &owner.helpers[..(lead.width - 1).min(owner.helpers.len())];
    let mut start = 0;
    while start < parts {
        let n = (parts - start).min(MAX_JOB);
        let job = |i: usize| {
            let _in = set(&IN_PART, true);
            f(start + i)
        };
        let waited = owner.gate.run(n, &job, helpers);
        WAITED.with(|w| w.set(w.get().wrapping_add(waited)));
        start += n;
    }
}

/// The current thread's seat in its team: 0 on a leading thread (or any thread that is not a
/// team's helper), `1..` on helpers. A hint only, for keeping the rows a part works on on the
/// same core from one job to the next; which thread runs which part stays free.
pub(crate) fn seat() -> usize {
    SEAT.with(Cell::get)
}

/// Whether the current thread is running a part of a team's job (where [`for_parts`] runs its
/// parts one after the other, and kernels had best be called with [`Par::Seq`](crate::Par)).
///
/// ```
/// use transformer_encoder_kernels::team::{for_parts, in_part, with_team};
/// assert!(!in_part());
/// with_team(2, || for_parts(2, &|_| assert!(in_part())));
/// ```
pub fn in_part() -> bool {
    IN_PART.with(Cell::get)
}

/// The nanoseconds the current thread has waited, as a team's leader, for helpers to finish
/// their last parts of a job (the barriers between operations), since it started. The
/// `latency` example prints the difference over its timed calls as `sync_ms`.
///
/// ```
/// use transformer_encoder_kernels::team::{for_parts, sync_nanos, with_team};
/// let before = sync_nanos();
/// with_team(2, || for_parts(4, &|_| {}));
/// assert!(sync_nanos() >= before);
/// ```
pub fn sync_nanos() -> u64 {
    WAITED.with(Cell::get)
}
