#!/usr/bin/env bash
# Miri (tree borrows) over the portable tier's kernel tests: the unsafe code every tier shares
# (kernel bodies, the table's safe wrappers, the team of threads, aligned buffers) checked for
# undefined behaviour. Installs the nightly miri component on first use.
#   .ci/miri.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rustup +nightly component list --installed 2>/dev/null | grep -q '^miri' \
  || rustup +nightly component add miri
# rayon's global registry and crossbeam's epoch collector live for the process: not leaks of ours.
# int8 products in passes of one KiB of panels (the portable test's 40 x 40 x 40 runs two).
export TRANSFORMER_ENCODER_INT8_PASS=1
export MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks -Zmiri-disable-isolation"
cargo +nightly miri test -p transformer-encoder-kernels --test portable --test team
# The exact GELU's table evaluated lane by lane (the default `piecewise32`, which the AVX-512
# permute must equal bit for bit).
cargo +nightly miri test -p transformer-encoder-kernels --lib -- simd::math::tests::piecewise_gelu_is_accurate_portable
