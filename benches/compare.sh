#!/usr/bin/env bash
# Side-by-side latency: ONNX Runtime (fused BERT ops) and PyTorch against this crate, same shape and
# thread count, one after the other in one run. Prints one line per measurement and the ratio.
#
#   benches/compare.sh [SECONDS]          (default 5 s per measurement)
#
# Needs the anchors in tools/ (or ANCHORS=dir) and a Python venv with onnxruntime
# (created in /tmp/ortenv on first use); PyTorch is measured if /tmp/torchenv has it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
anchors="${ANCHORS:-tools}"
if [ ! -x /tmp/ortenv/bin/python ]; then
  python3 -m venv /tmp/ortenv && /tmp/ortenv/bin/pip install -q onnxruntime onnx numpy
fi
cargo build --release --quiet --example latency
shapes=(
  "--hidden 768 --heads 12 --inter 3072 --seq 128 --batch 1 --threads 2"
  "--hidden 768 --heads 12 --inter 3072 --seq 128 --batch 1 --threads 1"
  "--hidden 768 --heads 12 --inter 3072 --seq 512 --batch 1 --threads 2"
  "--hidden 768 --heads 12 --inter 3072 --seq 128 --batch 8 --threads 2"
  "--hidden 384 --heads 12 --inter 1536 --seq 128 --batch 1 --threads 2"
  "--hidden 64 --heads 8 --inter 64 --seq 10 --batch 2 --threads 1"
)
med() { sed -n 's/.*median_ms=\([0-9.]*\).*/\1/p'; }
for s in "${shapes[@]}"; do
  ort=$(/tmp/ortenv/bin/python "$anchors/ort_anchor.py" $s --seconds "$secs" 2>/dev/null | tail -1)
  ours=$(./target/release/examples/latency $s --seconds "$secs")
  echo "$ort"
  echo "$ours"
  if [ -x /tmp/torchenv/bin/python ]; then
    pt=$(/tmp/torchenv/bin/python "$anchors/torch_anchor.py" $s --seconds "$secs" 2>/dev/null | tail -1 || true)
    [ -n "$pt" ] && echo "$pt"
  fi
  o=$(echo "$ort" | med); e=$(echo "$ours" | med)
  python3 -c "print(f'ratio encoder/ort = {float(\"$e\")/float(\"$o\"):.3f}   ($s)')"
done
