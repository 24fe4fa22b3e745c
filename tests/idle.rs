//! The team's helpers cost no CPU when there is nothing for them: after a call, and during a
//! serial stretch inside a call. One test in its own binary, so the process' CPU time is its
//! own. Linux only (the per-thread CPU times come from `/proc`).

#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::time::{Duration, Instant};
use transformer_encoder::*;
use transformer_encoder_kernels::team::{for_parts, with_team};

/// CPU time of a thread's `schedstat` file, in nanoseconds.
fn schedstat(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of each live thread of the process, by thread id.
fn thread_times() -> HashMap<String, u64> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| {
            let t = t.ok()?;
            let id = t.file_name().into_string().ok()?;
            Some((id, schedstat(&t.path().join("schedstat"))))
        })
        .collect()
}

/// CPU time the process' threads used since `before` (`thread_times`): each live thread's
/// growth, a thread started since then counted whole. A thread that ended meanwhile is not
/// counted (a sum over the live threads would drop by its whole time, and wrap).
fn cpu_since(before: &HashMap<String, u64>) -> u64 {
    thread_times()
        .iter()
        .map(|(id, &t)| t.saturating_sub(before.get(id).copied().unwrap_or(0)))
        .sum()
}

/// CPU time of the calling thread.
fn thread_cpu_ns() -> u64 {
    schedstat(std::path::Path::new("/proc/thread-self/schedstat"))
}

#[test]
fn helpers_sleep_after_calls_and_during_serial_stretches() {
    let cfg = EncoderConfig::new(512, 8);
    let w = EncoderWeights::init(&cfg, 256, 3).unwrap();
    let x: Vec<f32> = (0..4 * 64 * 256)
        .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
        .collect();
    for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
        let enc = TransformerEncoder::new(cfg.clone(), w.clone())
            .unwrap()
            .with_precision(precision)
            .unwrap()
            .with_threads(Threads::Count(2));
        for _ in 0..20 {
            enc.forward(TensorView::new(&x, &[4, 64, 256]), &CallOptions::new())
                .unwrap();
        }
        // After a call: the whole process in the next 200 ms.
        let before = thread_times();
        std::thread::sleep(Duration::from_millis(200));
        let idle = cpu_since(&before);
        assert!(
            idle < 5_000_000,
            "{precision}: {:.3} ms of CPU in 200 ms after a call",
            idle as f64 * 1e-6
        );
    }
    // A 20 ms serial stretch inside a call (one part of a job): the other threads of the
    // team (the helper, or the leader waiting for it) together.
    for round in 0..3 {
        let other = std::sync::Mutex::new(0u64);
        with_team(2, || {
            for_parts(2, &|i| {
                if i == round % 2 {
                    let (all, mine) = (thread_times(), thread_cpu_ns());
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_millis(20) {
                        std::hint::spin_loop();
                    }
                    let others = cpu_since(&all).saturating_sub(thread_cpu_ns() - mine);
                    *other.lock().unwrap() = others;
                }
            })
        });
        let others = *other.lock().unwrap();
        assert!(
            others < 2_000_000,
            "round {round}: the other threads used {:.3} ms during a 20 ms serial part",
            others as f64 * 1e-6
        );
    }
}
