//! Shared strategies and helpers.

use proptest::test_runner::{Config, FileFailurePersistence};
use transformer_encoder::Isa;

/// proptest configuration: `PROPTEST_CASES` sets the count; regressions go next to the sources.
pub fn config(default_cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..Config::default()
    }
}

/// The tiers to test: every available one; a tier named in `TRANSFORMER_ENCODER_REQUIRE_ISA`
/// that is missing fails the run.
pub fn tiers() -> Vec<Isa> {
    if let Ok(req) = std::env::var("TRANSFORMER_ENCODER_REQUIRE_ISA") {
        for name in req.split(',').filter(|s| !s.trim().is_empty()) {
            let isa: Isa = name.trim().parse().expect("a tier name");
            assert!(
                isa.is_available(),
                "required tier {isa} is not available on this CPU"
            );
        }
    }
    Isa::ALL
        .iter()
        .copied()
        .filter(|i| i.is_available())
        .collect()
}

/// Deterministic values in [lo, hi).
pub fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            lo + (hi - lo) * transformer_encoder_kernels::rng::uniform(seed, 7, i as u64) as f32
        })
        .collect()
}

/// `|fast - ref| <= atol + rtol * |ref|` element-wise, with a message naming the first failure.
pub fn check_close(
    fast: &[f32],
    reference: &[f64],
    atol: f64,
    rtol: f64,
    what: &str,
) -> Result<(), String> {
    if fast.len() != reference.len() {
        return Err(format!(
            "{what}: length {} vs {}",
            fast.len(),
            reference.len()
        ));
    }
    for (i, (f, r)) in fast.iter().zip(reference).enumerate() {
        // Both NaN, or the same infinity, agree (the uniform policy weights a poisoned masked
        // value exactly as Keras does).
        if (f.is_nan() && r.is_nan()) || (f.is_infinite() && *f as f64 == *r) {
            continue;
        }
        let d = (*f as f64 - r).abs();
        if d.is_nan() || d > atol + rtol * r.abs() {
            return Err(format!(
                "{what}: element {i}: fast {f} vs reference {r} (diff {d:e})"
            ));
        }
    }
    Ok(())
}
