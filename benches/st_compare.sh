#!/usr/bin/env bash
# Side-by-side embedding throughput: sentence-transformers (PyTorch fp32, tools/st_anchor.py) and
# this crate on the same model, workloads and thread count, one after the other.
#   benches/st_compare.sh [THREADS] [SECONDS]
# Needs /tmp/torchenv with torch + sentence-transformers (created on first use; a large download).
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"; secs="${2:-5}"
anchors="${ANCHORS:-tools}"
model=$(.ci/fetch_model.sh)
if [ ! -x /tmp/torchenv/bin/python ]; then
  python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install -q torch sentence-transformers numpy
fi
cargo build --release --quiet --example throughput
HF_HUB_OFFLINE=1 /tmp/torchenv/bin/python "$anchors/st_anchor.py" --model "$model" --threads "$threads" --seconds "$secs" 2>/dev/null
./target/release/examples/throughput --model "$model" --threads "$threads" --seconds "$secs"
