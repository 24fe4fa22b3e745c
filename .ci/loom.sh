#!/usr/bin/env bash
# The team of threads' protocol (kernels/src/team/gate.rs) model-checked with loom: every
# interleaving of a leader and one or two helpers over one or two jobs, parking included.
#   .ci/loom.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# A target folder of its own: the cfg rebuilds the kernels crate.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p transformer-encoder-kernels --lib --release team::gate::loom_model -- --test-threads=1
