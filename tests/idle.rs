//! The team's helpers cost no CPU when there is nothing for them: after a call, and during a
//! serial stretch inside a call. One test in its own binary, so the process' CPU time is its
//! own. Linux only (the per-thread CPU times come from `/proc`).

#![cfg(target_os = "linux")]

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

/// CPU time of every thread of the process.
fn process_cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| schedstat(&t.unwrap().path().join("schedstat")))
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
        let before = process_cpu_ns();
        std::thread::sleep(Duration::from_millis(200));
        let idle = process_cpu_ns() - before;
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
                    let (all, mine) = (process_cpu_ns(), thread_cpu_ns());
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_millis(20) {
                        std::hint::spin_loop();
                    }
                    let others = (process_cpu_ns() - all) - (thread_cpu_ns() - mine);
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
