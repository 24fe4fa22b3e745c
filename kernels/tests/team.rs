//! The team of threads from safe code, as any caller may use it: nesting at every depth up to
//! 3, on the leader and on helpers; every part finished before `for_parts` returns; panics;
//! calls into other rayon pools from inside a team; many teams at once. These also run under
//! Miri (`.ci/miri.sh`), with smaller counts.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;
use transformer_encoder_kernels::team::{for_parts, in_part, with_team};

/// Run `f` on its own thread and fail if it has not returned within `secs` (a hang).
fn watchdog(secs: u64, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => h.join().unwrap(),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: pass the panic on.
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("hung: no return within {secs} s"),
    }
}

/// A little work that takes long enough for the other threads to claim parts meanwhile.
fn work(units: usize) -> u64 {
    let per = if cfg!(miri) { 20 } else { 20_000 };
    let mut x = 1u64;
    for i in 0..units * per {
        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i as u64));
    }
    x
}

/// Nested `for_parts` at depth `depth` (1 to 3) inside a team of `threads`: every leaf part
/// runs exactly once, and each level's parts have all finished when its `for_parts` returns
/// (a part marks itself finished only at its very end, after its work and its children).
fn nested(threads: usize, depth: usize, fan: usize) -> bool {
    let leaves: Vec<AtomicUsize> = (0..fan.pow(depth as u32))
        .map(|_| AtomicUsize::new(0))
        .collect();
    let finished: Vec<AtomicBool> = (0..fan).map(|_| AtomicBool::new(false)).collect();
    fn level(d: usize, depth: usize, fan: usize, base: usize, leaves: &[AtomicUsize]) {
        let inner: Vec<AtomicBool> = (0..fan).map(|_| AtomicBool::new(false)).collect();
        for_parts(fan, &|i| {
            std::hint::black_box(work(1 + i % 3));
            let idx = base * fan + i;
            if d == depth {
                leaves[idx].fetch_add(1, Ordering::Relaxed);
            } else {
                level(d + 1, depth, fan, idx, leaves);
            }
            inner[i].store(true, Ordering::Release);
        });
        for (i, f) in inner.iter().enumerate() {
            assert!(
                f.load(Ordering::Acquire),
                "depth {d}: part {i} still running"
            );
        }
    }
    let leader = std::thread::current().id();
    let helped = AtomicBool::new(false);
    with_team(threads, || {
        for_parts(fan, &|i| {
            assert!(in_part());
            if std::thread::current().id() != leader {
                helped.store(true, Ordering::Relaxed);
            }
            // Odd parts take longer, so the leader finishes its share first and must wait.
            std::hint::black_box(work(if i % 2 == 1 { 20 } else { 1 }));
            if depth > 1 {
                level(2, depth, fan, i, &leaves);
            } else {
                leaves[i].fetch_add(1, Ordering::Relaxed);
            }
            finished[i].store(true, Ordering::Release);
        });
        for (i, f) in finished.iter().enumerate() {
            assert!(
                f.load(Ordering::Acquire),
                "part {i} still running after for_parts"
            );
        }
    });
    for (i, l) in leaves.iter().enumerate() {
        assert_eq!(l.load(Ordering::Relaxed), 1, "leaf {i}");
    }
    helped.load(Ordering::Relaxed)
}

#[test]
fn nested_for_parts_at_every_depth() {
    let rounds = if cfg!(miri) { 1 } else { 20 };
    watchdog(300, move || {
        let mut helped = 0;
        for _ in 0..rounds {
            for threads in [2, 3] {
                for depth in 1..=3 {
                    let fan = if cfg!(miri) { 2 } else { 3 };
                    helped += nested(threads, depth, fan) as usize;
                }
            }
        }
        // Helpers took part (else the test proves nothing about them). Under Miri a thread
        // may never be scheduled in time: there the other tests' interleavings must do.
        assert!(helped > 0 || cfg!(miri), "no part ran on a helper");
    });
}

#[test]
fn with_team_inside_parts_and_bodies() {
    watchdog(300, || {
        let hits: Vec<AtomicUsize> = (0..16).map(|_| AtomicUsize::new(0)).collect();
        with_team(2, || {
            // A nested team in the body shares the team.
            with_team(3, || {
                for_parts(4, &|i| {
                    // A team inside a part (on the leader or a helper) runs its body alone.
                    with_team(2, || {
                        for_parts(4, &|j| {
                            hits[i * 4 + j].fetch_add(1, Ordering::Relaxed);
                        })
                    })
                })
            })
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    });
}

#[test]
fn a_panic_reaches_the_caller_after_every_other_part() {
    watchdog(300, || {
        for bad in [0, 1, 5] {
            let done: Vec<AtomicBool> = (0..8).map(|_| AtomicBool::new(false)).collect();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_team(2, || {
                    for_parts(8, &|i| {
                        std::hint::black_box(work(5));
                        if i == bad {
                            panic!("part {i} fails");
                        }
                        done[i].store(true, Ordering::Release);
                    })
                })
            }));
            let msg = r.expect_err("the panic must reach the caller");
            assert_eq!(
                msg.downcast_ref::<String>().unwrap(),
                &format!("part {bad} fails")
            );
            for (i, d) in done.iter().enumerate() {
                assert_eq!(d.load(Ordering::Acquire), i != bad, "part {i}");
            }
            // The team still works afterwards.
            let n = AtomicUsize::new(0);
            with_team(2, || {
                for_parts(6, &|_| {
                    n.fetch_add(1, Ordering::Relaxed);
                })
            });
            assert_eq!(n.load(Ordering::Relaxed), 6);
        }
    });
}

/// A team's body that waits in other rayon pools, whose threads lead teams of their own (the
/// shape of a stack whose layers run on different pools): it returns.
#[test]
fn a_team_body_waiting_in_other_pools_returns() {
    let rounds = if cfg!(miri) { 1 } else { 50 };
    watchdog(300, move || {
        let p1 = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let p2 = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let n = AtomicUsize::new(0);
        let part = |_| {
            n.fetch_add(1, Ordering::Relaxed);
        };
        p1.install(|| {
            for _ in 0..rounds {
                with_team(2, || {
                    for_parts(3, &part);
                    p2.install(|| with_team(2, || for_parts(3, &part)));
                    rayon::join(|| for_parts(2, &part), || for_parts(2, &part));
                    for_parts(3, &part);
                });
            }
        });
        assert_eq!(n.load(Ordering::Relaxed), rounds * 13);
    });
}

/// Many threads leading teams at once, each its own.
#[test]
fn concurrent_leaders() {
    let (callers, rounds) = if cfg!(miri) { (2, 2) } else { (6, 200) };
    watchdog(300, move || {
        std::thread::scope(|s| {
            for c in 0..callers {
                s.spawn(move || {
                    for r in 0..rounds {
                        let parts = 1 + (c + r) % 7;
                        let hits: Vec<AtomicUsize> =
                            (0..parts).map(|_| AtomicUsize::new(0)).collect();
                        with_team(1 + (c + r) % 3, || {
                            for_parts(parts, &|i| {
                                hits[i].fetch_add(1, Ordering::Relaxed);
                            })
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    });
}
