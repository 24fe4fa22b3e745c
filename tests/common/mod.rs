#![allow(dead_code)]
//! Helpers shared by the integration tests and the property tests (`proptests/main.rs` includes
//! this file).

use proptest::test_runner::{Config, FileFailurePersistence};
use transformer_encoder::Isa;

/// The tiers to test: `Isa::under_test` (every available tier, or the one
/// `TRANSFORMER_ENCODER_ISA` forces); a tier `TRANSFORMER_ENCODER_REQUIRE_ISA` lists that this CPU
/// lacks fails the test instead of being skipped.
pub fn tiers() -> Vec<Isa> {
    let t = Isa::under_test().unwrap_or_else(|e| panic!("{e}"));
    for i in Isa::ALL {
        if !t.contains(&i) {
            eprintln!("note: tier {i} not tested here (unavailable or not forced)");
        }
    }
    t
}

/// Deterministic pseudo-random values in [lo, hi).
pub fn values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            lo + (hi - lo) * transformer_encoder_kernels::rng::uniform(seed, 99, i as u64) as f32
        })
        .collect()
}

/// A golden or data file under `tests/data/`.
pub fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

pub const GOLDEN: [&str; 10] = [
    "bert_epsilon_single_token",
    "gelu_approximate_prenorm",
    "gelu_padding_one_empty",
    "heads_not_dividing_hidden",
    "large_inputs",
    "minilm_like",
    "odd_sizes_random_attention",
    "prenorm_causal_and_padding",
    "seed_example",
    "silu_long",
];

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

/// [`check_close`] over the rows of `row` values whose `skip` flag is false (the tokens a float64
/// oracle flags as on a jump of the activation, `reference::ReferenceOutput::near_jump`).
pub fn check_close_rows(
    fast: &[f32],
    reference: &[f64],
    row: usize,
    skip: &[bool],
    atol: f64,
    rtol: f64,
    what: &str,
) -> Result<(), String> {
    if fast.len() != reference.len() || fast.len() != skip.len() * row {
        return Err(format!(
            "{what}: lengths {} and {} for {} rows of {row}",
            fast.len(),
            reference.len(),
            skip.len()
        ));
    }
    for (t, (f, r)) in fast
        .chunks(row.max(1))
        .zip(reference.chunks(row.max(1)))
        .enumerate()
    {
        if !skip[t] {
            check_close(f, r, atol, rtol, &format!("{what}, token {t}"))?;
        }
    }
    Ok(())
}
