#![allow(dead_code)]
//! Shared helpers for the integration tests.

use transformer_encoder::Isa;

/// Every tier this machine has. If `TRANSFORMER_ENCODER_REQUIRE_ISA` names tiers
/// (comma-separated), each must be available, or the test fails (a forced tier that cannot run
/// must not pass silently).
pub fn tiers() -> Vec<Isa> {
    if let Ok(req) = std::env::var("TRANSFORMER_ENCODER_REQUIRE_ISA") {
        for name in req.split(',').filter(|s| !s.trim().is_empty()) {
            let isa: Isa = name
                .trim()
                .parse()
                .expect("TRANSFORMER_ENCODER_REQUIRE_ISA names a tier");
            assert!(
                isa.is_available(),
                "required tier {isa} is not available on this CPU"
            );
        }
    }
    let v: Vec<Isa> = Isa::ALL
        .iter()
        .copied()
        .filter(|i| i.is_available())
        .collect();
    for i in Isa::ALL {
        if !i.is_available() {
            eprintln!("note: tier {i} not available on this CPU; its tests are skipped");
        }
    }
    v
}

/// Deterministic pseudo-random values in [lo, hi).
pub fn rand_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            lo + (hi - lo) * transformer_encoder_kernels::rng::uniform(seed, 99, i as u64) as f32
        })
        .collect()
}

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
