#!/usr/bin/env bash
# A brief fuzzing run of the public encoder API (tests/fuzz/fuzz_targets/encoder.rs): panics,
# hangs and results off the reference, without AddressSanitizer (.ci/memcheck.sh runs the test
# suite under it). Nightly toolchain; installs cargo-fuzz on first use. Not part of .ci/run: the
# build alone takes 4-6 minutes on 2 cores (CI type-checks the target instead).
#   .ci/fuzz.sh [SECONDS]   (default 45)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install --locked --quiet cargo-fuzz
# cargo-fuzz builds with one codegen unit: 16 took the build from 6.2 to 4.1 minutes here.
cargo +nightly fuzz run encoder --fuzz-dir tests/fuzz --sanitizer none --codegen-units 16 -- \
  -max_total_time="${1:-45}" -rss_limit_mb=4096 -max_len=4096
