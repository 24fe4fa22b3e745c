#!/usr/bin/env bash
# ARM servers (Graviton, Ampere) run the portable tier. This cross-compiles the crate for
# aarch64-unknown-linux-gnu without default features (the lean build: no BERT loader, no tokenizer)
# and runs the library's unit tests and the golden, API, adversarial and activation suites under
# Debian's qemu-user, installing what it needs (rustup target, cross gcc, qemu) on first use.
#   .ci/aarch64.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null \
   || [ ! -d /usr/aarch64-linux-gnu/lib ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q >/dev/null
  $sudo apt-get install -y -q gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# Only the portable tier exists there; the suites must see it run.
export TRANSFORMER_ENCODER_REQUIRE_ISA=portable
cargo test --release --target "$target" --no-default-features \
  --lib --test golden --test api --test adversarial --test activations "$@"
