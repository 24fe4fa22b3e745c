//! One team's job slot and the protocol around it: a leader publishes a job, helpers enter it,
//! claim its parts by index, and leave; the leader closes the job and returns only when every
//! helper that entered has left.
//!
//! The whole protocol is one 64-bit word, `epoch << 32 | CLOSED | count`:
//! - the leader opens job `e` by storing `e << 32` (open, nobody inside), after writing the job
//!   (closure, part count, helper count) that the helpers read once inside;
//! - a helper enters by a compare-and-swap that adds one to `count` only while the word still
//!   says `e` and open, so it can never enter a job that is closed, and nothing it reads can be
//!   of another job: the leader rewrites the job only when the previous one is closed and empty;
//! - the leader claims parts too, then sets `CLOSED`; it waits until `count` is zero, so every
//!   part it handed out has finished and no helper still holds the closure, which lives on the
//!   leader's stack.
//!
//! Waiting threads spin for [`SPIN`](super::sync::SPIN), then park. Parking is a Dekker pair
//! with a sequentially consistent fence on each side: the sleeper raises its flag, fences and
//! re-reads the word; the waker writes the word, fences and reads the flag. One of the two
//! always sees the other, so no wake-up is lost (an `unpark` that comes first makes the `park`
//! return at once). (Fences rather than `SeqCst` accesses: loom models fences exactly, and it
//! found the lost wake-up that `SeqCst` accesses alone let through in its model.)
//!
//! The protocol is model-checked with loom (`kernels/tests/loom.rs`).

use super::sync::{
    Arc, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Mutex, Ordering, Padded, Spinner, Thread,
    fence, thread,
};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// A job: the closure of one kernel call, run part by part.
pub(crate) type Job<'a> = &'a (dyn Fn(usize) + Sync);
/// A panic's payload.
type Payload = Box<dyn std::any::Any + Send>;

const CLOSED: u64 = 1 << 31;
const COUNT: u64 = CLOSED - 1;

/// A helper's flag: it is parked (or about to), and the leader must unpark it for a new job.
#[derive(Default)]
pub(crate) struct Seat {
    asleep: Padded<AtomicBool>,
}

/// A helper as its leader sees it.
pub(crate) struct Helper {
    pub(crate) thread: Thread,
    pub(crate) seat: Arc<Seat>,
}

/// The shared state of one team (one leader thread and its helpers).
pub(crate) struct Gate {
    /// `epoch << 32 | CLOSED | count` (see the module's documentation).
    word: Padded<AtomicU64>,
    /// The next part to claim.
    next: Padded<AtomicUsize>,
    /// The current job: a pointer to the leader's reference to its closure.
    job: AtomicPtr<Job<'static>>,
    /// Parts of the current job.
    parts: AtomicUsize,
    /// Helpers that take part in the current job (helper `i` does if `i < helpers`).
    helpers: AtomicUsize,
    /// The leading thread, parked while it waits for the last helper.
    leader: Thread,
    leader_asleep: AtomicBool,
    /// The leader's thread has ended: helpers return.
    shutdown: AtomicBool,
    /// A part panicked: its payload, resumed by the leader once the job is done.
    any_panic: AtomicBool,
    panicked: Mutex<Option<Payload>>,
}

impl Gate {
    /// The gate of a team led by the current thread.
    pub(crate) fn new() -> Gate {
        Gate {
            word: Padded(AtomicU64::new(CLOSED)),
            next: Padded(AtomicUsize::new(0)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            parts: AtomicUsize::new(0),
            helpers: AtomicUsize::new(0),
            leader: thread::current(),
            leader_asleep: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            any_panic: AtomicBool::new(false),
            panicked: Mutex::new(None),
        }
    }

    /// Claim and run parts of the current job until none is left; a panic is kept for the
    /// leader and the other parts still run.
    fn work(&self, f: Job<'_>, parts: usize) {
        loop {
            let part = self.next.fetch_add(1, Ordering::Relaxed);
            if part >= parts {
                return;
            }
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(part))) {
                let mut p = self.panicked.lock().unwrap_or_else(|e| e.into_inner());
                p.get_or_insert(payload);
                self.any_panic.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Leader: run parts `0..parts` of `f` on this thread and `helpers`; return when every part
    /// is done, resuming the first panic of a part. Returns the nanoseconds spent waiting for
    /// helpers to finish their last parts. `parts` must be below `usize::MAX / 2` (so that
    /// claims past the end cannot wrap), and only the thread that made the gate may call this,
    /// never from inside one of its parts.
    pub(crate) fn run(&self, parts: usize, f: Job<'_>, helpers: &[Helper]) -> u64 {
        debug_assert!(parts < usize::MAX / 2);
        let mut slot: Job<'_> = f;
        // The job is rewritten only here, while the previous one is closed and empty (the end
        // of the previous `run`), so no helper reads these while they change.
        self.job.store(
            &mut slot as *mut Job<'_> as *mut Job<'static>,
            Ordering::Relaxed,
        );
        self.parts.store(parts, Ordering::Relaxed);
        self.helpers.store(helpers.len(), Ordering::Relaxed);
        self.next.store(0, Ordering::Relaxed);
        let epoch = ((self.word.load(Ordering::Relaxed) >> 32) + 1) & 0xFFFF_FFFF;
        // Open: the release publishes the stores above to every helper that enters.
        self.word.store(epoch << 32, Ordering::Release);
        fence(Ordering::SeqCst);
        for h in helpers {
            if h.seat.asleep.load(Ordering::Relaxed) {
                h.thread.unpark();
            }
        }
        self.work(f, parts);
        // Close, then wait for the helpers inside to leave.
        #[cfg_attr(loom, allow(unused_mut))]
        let mut waited = 0;
        if self.word.fetch_or(CLOSED, Ordering::AcqRel) & COUNT != 0 {
            #[cfg(not(loom))]
            let start = std::time::Instant::now();
            let mut spinner = Spinner::new();
            while self.word.load(Ordering::Acquire) & COUNT != 0 {
                if !spinner.spin() {
                    self.leader_asleep.store(true, Ordering::Relaxed);
                    fence(Ordering::SeqCst);
                    if self.word.load(Ordering::Acquire) & COUNT != 0 {
                        thread::park();
                    }
                    self.leader_asleep.store(false, Ordering::Relaxed);
                }
            }
            #[cfg(not(loom))]
            {
                waited = start.elapsed().as_nanos() as u64;
            }
        }
        self.job.store(std::ptr::null_mut(), Ordering::Relaxed);
        if self.any_panic.swap(false, Ordering::Relaxed) {
            let payload = self
                .panicked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(p) = payload {
                std::panic::resume_unwind(p);
            }
        }
        waited
    }

    /// Helper `index`: take part in each new job until the leader's thread ends.
    pub(crate) fn serve(&self, index: usize, seat: &Seat) {
        let mut seen = 0u64;
        let mut spinner = Spinner::new();
        loop {
            let w = self.word.load(Ordering::Acquire);
            let epoch = w >> 32;
            if epoch != seen && w & CLOSED == 0 {
                if self
                    .word
                    .compare_exchange_weak(w, w + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    continue;
                }
                seen = epoch;
                if index < self.helpers.load(Ordering::Relaxed) {
                    let job = self.job.load(Ordering::Relaxed);
                    // SAFETY: this helper is inside the job (counted in the word): the leader
                    // stored a pointer to its own reference to the closure before opening the
                    // job, and keeps both alive until every helper inside has left.
                    let f: Job<'_> = unsafe { *job };
                    self.work(f, self.parts.load(Ordering::Relaxed));
                }
                let prev = self.word.fetch_sub(1, Ordering::AcqRel);
                if prev & CLOSED != 0 && prev & COUNT == 1 {
                    fence(Ordering::SeqCst);
                    if self.leader_asleep.load(Ordering::Relaxed) {
                        self.leader.unpark();
                    }
                }
                spinner = Spinner::new();
                continue;
            }
            seen = epoch;
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            if !spinner.spin() {
                seat.asleep.store(true, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                let w = self.word.load(Ordering::Acquire);
                let fresh = w >> 32 != seen && w & CLOSED == 0;
                if !fresh && !self.shutdown.load(Ordering::SeqCst) {
                    thread::park();
                }
                seat.asleep.store(false, Ordering::Relaxed);
            }
        }
    }

    /// The leader's thread is ending: every helper returns (and drops its handle on the gate).
    pub(crate) fn shut_down(&self, helpers: &[Helper]) {
        self.shutdown.store(true, Ordering::SeqCst);
        for h in helpers {
            h.thread.unpark();
        }
    }
}

/// The protocol under loom: every interleaving of a leader and its helpers over two jobs,
/// parking included (under loom a waiting thread parks at once). Each part must run exactly
/// once, and all of a job's parts must be done when `run` returns.
#[cfg(all(test, loom))]
mod loom_model {
    use super::*;
    use loom::sync::atomic::AtomicUsize;

    /// A leader with `helpers` helpers runs `jobs` jobs of `parts` parts each, every
    /// interleaving with at most `preemptions` preemptions (the search grows steeply with it).
    fn model(helpers: usize, jobs: usize, parts: usize, preemptions: usize) {
        let mut b = loom::model::Builder::new();
        b.preemption_bound = Some(preemptions);
        b.check(move || {
            let gate = Arc::new(Gate::new());
            let mut team = Vec::new();
            let mut handles = Vec::new();
            for i in 0..helpers {
                let seat = Arc::new(Seat::default());
                let (g, s) = (gate.clone(), seat.clone());
                let h = loom::thread::spawn(move || g.serve(i, &s));
                team.push(Helper {
                    thread: h.thread().clone(),
                    seat,
                });
                handles.push(h);
            }
            for _ in 0..jobs {
                let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                gate.run(
                    parts,
                    &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    },
                    &team,
                );
                for h in &hits {
                    assert_eq!(h.load(Ordering::Relaxed), 1);
                }
            }
            gate.shut_down(&team);
            for h in handles {
                h.join().unwrap();
            }
        });
    }

    #[test]
    fn one_helper_two_jobs() {
        model(1, 2, 2, 4);
    }

    #[test]
    fn two_helpers_one_job() {
        model(2, 1, 2, 2);
    }

    #[test]
    fn two_helpers_two_jobs() {
        model(2, 2, 1, 2);
    }
}
