#!/usr/bin/env bash
# AddressSanitizer over the test suite (nightly toolchain): out-of-bounds reads or writes in the
# kernels, on every tier this CPU has (the tests force each one). Valgrind cannot run the
# AVX-512 tier, so ASan is the memory checker here. Without the BERT loader (its tokenizer is a
# third of the build, and its only unsafe code is the kernels', which the suites below run).
#   .ci/memcheck.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTFLAGS="-Zsanitizer=address"
export RUSTDOCFLAGS="-Zsanitizer=address"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
export PROPTEST_CASES="${PROPTEST_CASES:-16}"
# Optimised at level 1, not the test profile's 3: the build took 6.3 minutes, not 7.8, and the
# tests 25 s, not 20 (2 cores, Zen 3).
export CARGO_PROFILE_TEST_OPT_LEVEL="${CARGO_PROFILE_TEST_OPT_LEVEL:-1}"
# Line tables only, not full debug info: ASan's reports still name file and line, and the build
# (10.5 minutes with full debug info in a slow hour of 2026-12-07, 29 % of that CI run) has
# less to write.
export CARGO_PROFILE_TEST_DEBUG="${CARGO_PROFILE_TEST_DEBUG:-line-tables-only}"
cargo +nightly test --target x86_64-unknown-linux-gnu --target-dir target/asan --no-default-features \
  --test adversarial --test proptests --test api --test golden --test threads "$@"
