//! The team of threads' own costs (`cargo bench --bench team`): a job's round trip on a team
//! of 2 whose helper is awake (the barrier between two operations of a layer), and waking a
//! parked team (the first job of a call after the helpers went to sleep).
//!
//! Each job has 2 parts that wait for each other, so both threads take part in every job: the
//! time is publishing the job, the helper seeing it and entering, both parts meeting, and the
//! leader seeing the helper leave.

use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use transformer_encoder_kernels::team::{for_parts, with_team};

/// One job of 2 parts that meet: each arrives, then waits for the other (spinning, or yielding
/// its CPU: a woken helper may be queued on the leader's CPU, behind a spinning part).
fn rendezvous(arrived: &AtomicUsize, yielding: bool) {
    arrived.store(0, Ordering::Relaxed);
    for_parts(2, &|_| {
        arrived.fetch_add(1, Ordering::AcqRel);
        while arrived.load(Ordering::Acquire) < 2 {
            if yielding {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    });
}

fn team(c: &mut Criterion) {
    let mut g = c.benchmark_group("team");
    let arrived = AtomicUsize::new(0);
    g.bench_function("round_trip_2_threads", |b| {
        with_team(2, || b.iter(|| rendezvous(&arrived, false)))
    });
    // A parked team: after each job the helper spins out its 50 µs and parks (1 ms here). The
    // job opens in the same `with_team`: the time is the wake-up itself.
    g.sample_size(20);
    let mut cold = Vec::new();
    g.bench_function("wake_parked_2_threads", |b| {
        with_team(2, || {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    std::thread::sleep(Duration::from_millis(1));
                    let t = Instant::now();
                    rendezvous(&arrived, true);
                    let took = t.elapsed();
                    total += took;
                    cold.push(took);
                }
                total
            })
        })
    });
    // The mean hides a long tail: the percentiles of every wake-up timed.
    cold.sort();
    let at = |q: f64| cold[((cold.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "team/wake_parked_2_threads: p50 {:.1} us, p90 {:.1} us, p99 {:.1} us ({} wake-ups)",
        at(0.5),
        at(0.9),
        at(0.99),
        cold.len()
    );
    g.finish();
}

criterion_group!(benches, team);
criterion_main!(benches);
