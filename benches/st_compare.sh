#!/usr/bin/env bash
# Side-by-side embedding throughput, one run: sentence-transformers (tools/st_anchor.py) on each of
# its CPU backends, then this crate (ragged and padded, float32, bf16 and int8), on the same model
# (all-MiniLM-L6-v2), workloads (32 queries, 8 passages, the 64-text mixed-length corpus) and
# thread count. Medians over SECONDS per workload.
#   benches/st_compare.sh [THREADS] [SECONDS] [BACKEND...]
# BACKEND: torch onnx onnx-qint8 openvino openvino-qint8 (default: all five).
# Needs /tmp/torchenv (created on first use from PyPI: torch, sentence-transformers with its onnx
# and openvino extras; a large download).
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-2}"; secs="${2:-5}"
shift $(( $# < 2 ? $# : 2 ))
backends=("$@")
[ ${#backends[@]} -gt 0 ] || backends=(torch onnx onnx-qint8 openvino openvino-qint8)
corpus=tests/data/corpus/mixed_lengths.txt
model=$(.ci/fetch_model.sh)
if [ ! -x /tmp/torchenv/bin/python ]; then
  python3 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install -q torch "sentence-transformers[onnx,openvino]" "datasets<4"
fi
cargo build --release --quiet --example throughput
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F), threads=$threads"
for b in "${backends[@]}"; do
  HF_HUB_OFFLINE=1 /tmp/torchenv/bin/python tools/st_anchor.py --model "$model" --threads "$threads" \
    --seconds "$secs" --corpus "$corpus" --backend "$b" 2>/dev/null | grep '^st '
done
for precision in fp32 bf16 int8; do
  for path in "" --padded; do
    ./target/release/examples/throughput --model "$model" --threads "$threads" --seconds "$secs" \
      --precision $precision --corpus "$corpus" $path
  done
done
