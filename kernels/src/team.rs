//! A team of threads that stays awake for a whole call.
//!
//! A layer runs a dozen parallel kernels in a row (LayerNorm, products, attention, quantization),
//! each a few tens of microseconds long. Handing each one to rayon separately lets the workers
//! fall asleep between them, and waking them costs about as much as the work. [`with_team`]
//! instead starts `n - 1` helpers once (as rayon jobs of the current pool), which spin on a
//! shared job slot until the call ends; every kernel's parts inside the call are claimed from
//! that slot by whoever is free, the caller included.
//!
//! Parts are claimed by index, so the split of the work, and therefore every result, is the same
//! whoever runs which part. If a helper never starts (the pool is busy), the caller runs the
//! parts itself: nothing waits for a particular thread.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// A job: the closure of one kernel call, run part by part.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

/// The job slot shared by a team.
struct Team {
    /// `(phase << 32) | next part`: a part is claimed by a compare-and-swap that also checks the
    /// phase, so a helper that saw an earlier job can never claim a part of a later one.
    claim: AtomicU64,
    /// Parts of the current job.
    parts: AtomicUsize,
    /// Parts finished.
    done: AtomicUsize,
    /// The current job (a pointer to the leader's reference to its closure).
    job: AtomicPtr<Job<'static>>,
    /// A part panicked on a helper: its payload (the leader resumes it when the job is done).
    panicked: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// The call is over: helpers return.
    stop: AtomicBool,
}

thread_local! {
    /// The team the current thread leads, if any.
    static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

impl Team {
    fn new() -> Team {
        Team {
            claim: AtomicU64::new(0),
            parts: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            panicked: std::sync::Mutex::new(None),
            stop: AtomicBool::new(false),
        }
    }

    /// Claim and run parts of the job of `phase` until none is left.
    fn help(&self, phase: u64) {
        loop {
            let c = self.claim.load(Ordering::Acquire);
            let parts = self.parts.load(Ordering::Acquire) as u64;
            if c >> 32 != phase || (c & 0xFFFF_FFFF) >= parts {
                return;
            }
            if self
                .claim
                .compare_exchange_weak(c, c + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            // A part of `phase` was claimed, so that job is still live (its leader waits for all
            // of its parts): the slot holds its closure.
            let job = self.job.load(Ordering::Acquire);
            // SAFETY: `run` stored a pointer to its own reference to the closure before
            // publishing this phase, and returns (ending both lifetimes) only when every part
            // of the phase is done, which cannot happen before this part is.
            let f: Job<'_> = unsafe { *job };
            let part = (c & 0xFFFF_FFFF) as usize;
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(part))) {
                let mut p = self.panicked.lock().unwrap_or_else(|e| e.into_inner());
                p.get_or_insert(payload);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Run `parts` parts of `f` on the team; return when all are done.
    fn run(&self, parts: usize, f: Job<'_>) {
        let phase = (self.claim.load(Ordering::Acquire) >> 32) + 1;
        let mut slot: Job<'_> = f;
        // The helpers see the job only between the publication below and the last part's
        // completion; `slot` and `f` outlive that (this function waits for it).
        self.job.store(
            &mut slot as *mut Job<'_> as *mut Job<'static>,
            Ordering::Release,
        );
        self.parts.store(parts, Ordering::Release);
        self.done.store(0, Ordering::Release);
        self.claim.store(phase << 32, Ordering::Release);
        self.help(phase);
        let mut spins = 0u32;
        while self.done.load(Ordering::Acquire) < parts {
            spin(&mut spins);
        }
        self.job.store(std::ptr::null_mut(), Ordering::Release);
        let payload = self
            .panicked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(p) = payload {
            std::panic::resume_unwind(p);
        }
    }

    /// A helper: run the parts of each new job until the call ends.
    fn serve(&self) {
        // Phases start at 1: a helper that starts late joins the job already running.
        let mut seen = 0;
        let mut spins = 0u32;
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let phase = self.claim.load(Ordering::Acquire) >> 32;
            if phase != seen {
                seen = phase;
                spins = 0;
                self.help(phase);
            } else {
                spin(&mut spins);
            }
        }
    }
}

/// Busy-wait politely: spin a while, then give the core away between checks.
fn spin(spins: &mut u32) {
    if *spins < 1 << 14 {
        std::hint::spin_loop();
        *spins += 1;
    } else {
        std::thread::yield_now();
    }
}

/// Run `body` with a team of `threads` (the caller and `threads - 1` helpers from the current
/// rayon pool, which stay awake until `body` returns; `threads <= 1`: `body` alone). Kernels called inside `body` on this
/// thread with [`Par::Threads`](crate::Par) split their work on the team.
///
/// ```
/// use transformer_encoder_kernels::team::with_team;
/// let v = with_team(2, || 40 + 2);
/// assert_eq!(v, 42);
/// ```
pub fn with_team<R: Send>(threads: usize, body: impl FnOnce() -> R + Send) -> R {
    if threads <= 1 || !LEADING.with(|l| l.get().is_null()) {
        return body();
    }
    let team = Team::new();
    /// Ends the call for the helpers and restores the caller's state, even if `body` unwinds.
    struct Lead<'a>(&'a Team, *const Team);
    impl Drop for Lead<'_> {
        fn drop(&mut self) {
            self.0.stop.store(true, Ordering::Release);
            LEADING.with(|l| l.set(self.1));
        }
    }
    // `rayon::join` runs its first closure here and offers the second to the pool's other
    // threads (stack jobs: no allocation per call). Each level offers one helper.
    fn offer<R: Send>(team: &Team, helpers: usize, body: impl FnOnce() -> R + Send) -> R {
        if helpers == 0 {
            let prev = LEADING.with(|l| l.replace(team));
            let _lead = Lead(team, prev);
            return body();
        }
        rayon::join(|| offer(team, helpers - 1, body), || team.serve()).0
    }
    offer(&team, threads - 1, body)
}

/// Run parts `0..parts` of `f`: on the team this thread leads, if any, else on rayon's current
/// pool (`parts > 1`) or here. Returns when every part is done.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use transformer_encoder_kernels::team::{for_parts, with_team};
/// let hits: Vec<AtomicUsize> = (0..5).map(|_| AtomicUsize::new(0)).collect();
/// with_team(2, || for_parts(5, &|i| { hits[i].fetch_add(1, Ordering::Relaxed); }));
/// assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
/// ```
pub fn for_parts(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 {
        if parts == 1 {
            f(0);
        }
        return;
    }
    let team = LEADING.with(|l| l.get());
    if team.is_null() {
        use rayon::prelude::*;
        (0..parts).into_par_iter().for_each(f);
    } else {
        // SAFETY: LEADING points to the team of an enclosing `with_team` on this thread, which
        // is alive until that call returns (it restores LEADING first).
        unsafe { (*team).run(parts, f) };
    }
}
