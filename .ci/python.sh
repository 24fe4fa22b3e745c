#!/usr/bin/env bash
# The Python package: a fresh venv from PyPI, the wheel built and installed into it with
# `pip install ./python` (maturin, abi3), then the pytest suite: the Rust embeddings bit for bit,
# PyTorch's float64 ones within the crate's bounds, real KerasHub layers (JAX backend) in float32,
# Keras' int8 and mixed_bfloat16, threads, bad input, and the Ray Data example on a local Ray.
#   .ci/python.sh [VENV]     (default target/pyenv; an existing venv is reused)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-target/pyenv}"
.ci/pyenv.sh "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./python
# The Rust example the tests compare with, and the model they embed with.
cargo build --release --quiet --example embed
.ci/fetch_model.sh > /dev/null
cd python
KERAS_BACKEND=jax TE_REQUIRE_KERAS=1 TE_REQUIRE_RAY=1 RAY_ENABLE_UV_RUN_RUNTIME_ENV=0 \
  "../$venv/bin/python" -m pytest -q -p no:cacheprovider tests
