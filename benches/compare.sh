#!/usr/bin/env bash
# Side-by-side latency: ONNX Runtime, OpenVINO and PyTorch against this crate, same shape and
# thread count, one after the other in one run. Prints one line per measurement and the ratios.
#
#   [ROUNDS=3] benches/compare.sh [SECONDS] [fp32|bf16|int8]   (default 5 s per measurement, fp32,
#   1 round; with ROUNDS=n each shape runs n interleaved rounds and the ratios use the medians)
#
# fp32: ONNX Runtime (fused BERT ops, tools/ort_anchor.py), OpenVINO fp32 (tools/ov_anchor.py),
# PyTorch (tools/torch_anchor.py) if /tmp/torchenv has it. int8: ONNX Runtime's dynamic int8
# (--quant int8) and OpenVINO's NNCF int8 (--precision int8) against the crate in Keras' int8.
# bf16: OpenVINO bf16 (--precision bf16) and PyTorch bf16 (--dtype bfloat16, if /tmp/torchenv
# has it) against the crate in Keras' mixed_bfloat16 (ONNX Runtime has no bf16 on CPUs).
# The anchors are in tools/ (or ANCHORS=dir); their venvs are created in /tmp on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
precision="${2:-fp32}"
rounds="${ROUNDS:-1}"
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
  "--hidden 768 --heads 12 --inter 3072 --seq 16 --batch 1 --threads 1 --layers 12"
  "--hidden 64 --heads 8 --inter 64 --seq 10 --batch 2 --threads 1"
)
case "$precision" in
  fp32) shapes+=("--hidden 768 --heads 12 --inter 3072 --seq 128 --batch 8 --threads 2")
        ortq=""; ovp="fp32"; ptd="float32" ;;
  bf16) ortq=""; ovp="bf16"; ptd="bfloat16" ;;
  int8) ortq="--quant int8"; ovp="int8"; ptd="" ;;
  *) echo "compare.sh: precision must be fp32, bf16 or int8, got '$precision'" >&2; exit 2 ;;
esac
case "$rounds" in
  ''|*[!0-9]*|0) echo "compare.sh: ROUNDS must be a positive integer, got '$rounds'" >&2; exit 2 ;;
esac
med() { sed -n 's/.*median_ms=\([0-9.]*\).*/\1/p' | sort -g | awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]}'; }
for s in "${shapes[@]}"; do
  # ROUNDS rounds, the runtimes interleaved in each (a shared host's slow minute hits them all);
  # the ratio is of the medians of each runtime's per-round medians.
  ort=""; ov=""; ours=""; pt=""
  for _ in $(seq "$rounds"); do
    if [ "$precision" != bf16 ]; then
      ort+=$(/tmp/ortenv/bin/python "$anchors/ort_anchor.py" $s $ortq --seconds "$secs" 2>/dev/null | tail -1)$'\n'
    fi
    ov+=$(/tmp/ovenv/bin/python "$anchors/ov_anchor.py" $s --precision "$ovp" --seconds "$secs" 2>/dev/null | tail -1 || true)$'\n'
    ours+=$(./target/release/examples/latency $s --precision "$precision" --seconds "$secs")$'\n'
    if [ -n "$ptd" ] && [ -x /tmp/torchenv/bin/python ]; then
      pt+=$(/tmp/torchenv/bin/python "$anchors/torch_anchor.py" $s --dtype "$ptd" --seconds "$secs" 2>/dev/null | tail -1 || true)$'\n'
    fi
  done
  printf '%s' "$ort$ov$ours$pt" | grep -v '^$' || true
  o=$(echo "$ort" | med); v=$(echo "$ov" | med); e=$(echo "$ours" | med); t=$(echo "$pt" | med)
  python3 -c "
nan = float('nan')
o, v, e, t = (float(x) if x else nan for x in ('$o', '$v', '$e', '$t'))
others = [x for x in (o, v, t) if x == x]
best = min(others) if others else nan
print(f'ratio encoder/ort = {e/o:.3f}  encoder/openvino = {e/v:.3f}  encoder/torch = {e/t:.3f}  encoder/best = {e/best:.3f}   ($s)')"
done
