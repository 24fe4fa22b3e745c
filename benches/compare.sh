#!/usr/bin/env bash
# Side-by-side latency: ONNX Runtime, OpenVINO and PyTorch against this crate, same shape and
# thread count, one after the other in one run. Prints one line per measurement and the ratios.
#
#   benches/compare.sh [SECONDS] [fp32|int8]      (default 5 s per measurement, fp32)
#
# fp32: ONNX Runtime (fused BERT ops, tools/ort_anchor.py), OpenVINO fp32 (tools/ov_anchor.py),
# PyTorch (tools/torch_anchor.py) if /tmp/torchenv has it. int8: ONNX Runtime's dynamic int8
# (--quant int8) and OpenVINO's NNCF int8 (--precision int8) against the crate in Keras' int8.
# The anchors are in tools/ (or ANCHORS=dir); their venvs are created in /tmp on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
precision="${2:-fp32}"
anchors="${ANCHORS:-tools}"
if [ ! -x /tmp/ortenv/bin/python ]; then
  python3 -m venv /tmp/ortenv && /tmp/ortenv/bin/pip install -q onnxruntime onnx numpy
fi
if [ ! -x /tmp/ovenv/bin/python ]; then
  python3 -m venv /tmp/ovenv && /tmp/ovenv/bin/pip install -q openvino nncf onnx onnxruntime numpy
fi
cargo build --release --quiet --example latency
shapes=(
  "--hidden 768 --heads 12 --inter 3072 --seq 128 --batch 1 --threads 2"
  "--hidden 768 --heads 12 --inter 3072 --seq 128 --batch 1 --threads 1"
  "--hidden 768 --heads 12 --inter 3072 --seq 512 --batch 1 --threads 2"
  "--hidden 384 --heads 12 --inter 1536 --seq 128 --batch 1 --threads 2"
  "--hidden 384 --heads 12 --inter 1536 --seq 16 --batch 1 --threads 1 --layers 6"
  "--hidden 64 --heads 8 --inter 64 --seq 10 --batch 2 --threads 1"
)
if [ "$precision" = fp32 ]; then
  shapes+=("--hidden 768 --heads 12 --inter 3072 --seq 128 --batch 8 --threads 2")
  ortq=""; ovp="fp32"
else
  ortq="--quant int8"; ovp="int8"
fi
med() { sed -n 's/.*median_ms=\([0-9.]*\).*/\1/p'; }
for s in "${shapes[@]}"; do
  ort=$(/tmp/ortenv/bin/python "$anchors/ort_anchor.py" $s $ortq --seconds "$secs" 2>/dev/null | tail -1)
  ov=$(/tmp/ovenv/bin/python "$anchors/ov_anchor.py" $s --precision "$ovp" --seconds "$secs" 2>/dev/null | tail -1 || true)
  ours=$(./target/release/examples/latency $s --precision "$precision" --seconds "$secs")
  echo "$ort"
  [ -n "$ov" ] && echo "$ov"
  echo "$ours"
  if [ "$precision" = fp32 ] && [ -x /tmp/torchenv/bin/python ]; then
    pt=$(/tmp/torchenv/bin/python "$anchors/torch_anchor.py" $s --seconds "$secs" 2>/dev/null | tail -1 || true)
    [ -n "$pt" ] && echo "$pt"
  fi
  o=$(echo "$ort" | med); v=$(echo "$ov" | med); e=$(echo "$ours" | med)
  python3 -c "
o, v, e = float('$o'), float('${v:-nan}'), float('$e')
best = min(x for x in (o, v) if x == x)
print(f'ratio encoder/ort = {e/o:.3f}  encoder/openvino = {e/v:.3f}  encoder/best = {e/best:.3f}   ($s)')"
done
