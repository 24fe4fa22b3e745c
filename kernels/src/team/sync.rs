//! The synchronisation primitives the team is written against: `std`'s, or `loom`'s when the
//! crate is built with `--cfg loom` (the model check in `kernels/tests/loom.rs`).

#[cfg(loom)]
pub(crate) use loom::{
    hint::spin_loop,
    sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence},
    sync::{Arc, Mutex},
    thread::{self, Thread},
};
#[cfg(not(loom))]
pub(crate) use std::{
    hint::spin_loop,
    sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence},
    sync::{Arc, Mutex},
    thread::{self, Thread},
};

/// A value on a cache line of its own (no false sharing between the leader's and the helpers'
/// words).
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// How long a waiting thread spins before it parks. Long enough to span the gap between two
/// kernels of a layer (a few microseconds), short enough that a thread waiting on serial work
/// costs almost nothing.
#[cfg(not(loom))]
pub(crate) const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// From this long into a spin, the spinner yields at each check (see [`Spinner::spin`]); the
/// gaps between a layer's kernels are shorter.
#[cfg(not(loom))]
pub(crate) const YIELD_AFTER: std::time::Duration = std::time::Duration::from_micros(5);

/// Spins until `SPIN` has passed since the first call (checked every 64 spins), then says stop.
pub(crate) struct Spinner {
    spins: u32,
    #[cfg(not(loom))]
    since: Option<std::time::Instant>,
}

impl Spinner {
    pub(crate) fn new() -> Spinner {
        Spinner {
            spins: 0,
            #[cfg(not(loom))]
            since: None,
        }
    }

    /// Spin once; `false` when the bound is reached (time to park). Past [`YIELD_AFTER`] the
    /// spinning thread also yields its CPU at every check: a thread just woken may have been
    /// queued on the spinner's CPU (the scheduler's choice), and would otherwise wait for the
    /// whole bound.
    #[cfg(not(loom))]
    pub(crate) fn spin(&mut self) -> bool {
        self.spins = self.spins.wrapping_add(1);
        if self.spins.is_multiple_of(64) {
            let now = std::time::Instant::now();
            let since = *self.since.get_or_insert(now);
            let spun = now.duration_since(since);
            if spun >= SPIN {
                return false;
            }
            if spun >= YIELD_AFTER {
                thread::yield_now();
            }
        }
        spin_loop();
        true
    }

    /// Under loom every wait parks at once (loom explores the interleavings, not the timing).
    #[cfg(loom)]
    pub(crate) fn spin(&mut self) -> bool {
        self.spins += 1;
        if self.spins > 1 {
            return false;
        }
        spin_loop();
        true
    }
}
