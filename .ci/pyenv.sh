#!/usr/bin/env bash
# The Python tests' venv, from PyPI (numpy, pytest, JAX, Keras, KerasHub, Ray Data): made once,
# an existing one is kept. `.ci/run` makes it in the background while Rust compiles (the
# downloads overlap the build), `.ci/python.sh` on its own otherwise.
#   .ci/pyenv.sh [VENV]     (default target/pyenv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-target/pyenv}"
# The marker is written last: a venv left half made (an interrupted run) is made again.
if [ ! -f "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
  "${pip[@]}" numpy pytest "jax[cpu]" keras "ray[data]" pyarrow
  # keras-hub without its tokenizers' TensorFlow (tensorflow-text pulls 2 GB of TensorFlow): the
  # layers need keras and these alone.
  "${pip[@]}" absl-py packaging regex rich tokenizers sentencepiece kagglehub
  "${pip[@]}" --no-deps keras-hub
  touch "$venv/.complete"
fi
