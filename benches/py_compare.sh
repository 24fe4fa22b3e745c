#!/usr/bin/env bash
# The Python package side by side, one run, rounds interleaved: the wheel's encode (from Python)
# against the Rust `throughput` example and sentence-transformers' CPU backends on the 64-text
# corpus; 4 Python threads sharing one 1-thread encoder against one; the Ray Data example on 2
# local workers of 1 thread against one direct encode call on 2 threads (the corpus repeated to
# 2,000 texts). Prints every measurement, then the medians and the ratios the targets name.
#   benches/py_compare.sh [ROUNDS] [SECONDS] [BACKEND...]     (default 3 rounds of 3 s)
# Needs the venv of .ci/python.sh (target/pyenv, made on first use) and, for the
# sentence-transformers lines, /tmp/torchenv (see benches/st_compare.sh); BACKEND: none to skip.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"; secs="${2:-3}"
shift $(( $# < 2 ? $# : 2 ))
backends=("$@")
[ ${#backends[@]} -gt 0 ] || backends=(openvino openvino-qint8 onnx-qint8 torch)
[ "${backends[*]}" = none ] && backends=()
py=target/pyenv/bin/python
[ -x "$py" ] || .ci/python.sh > /dev/null
model=$(.ci/fetch_model.sh)
corpus=tests/data/corpus/mixed_lengths.txt
big=$(mktemp); trap 'rm -rf "$big" "$big.parquet"' EXIT
for _ in $(seq 32); do cat "$corpus"; done | head -n 2000 > "$big"
cargo build --release --quiet --example throughput
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%F), 2 threads"
for r in $(seq "$rounds"); do
  for p in fp32 bf16 int8; do
    ./target/release/examples/throughput --model "$model" --threads 2 --seconds "$secs" --precision $p \
      --corpus "$corpus" --workload corpus-64 | sed 's/^encoder/rust/'
    $py python/examples/throughput.py --model "$model" --corpus "$corpus" --threads 2 --seconds "$secs" --precision $p
  done
  for b in "${backends[@]}"; do
    HF_HUB_OFFLINE=1 /tmp/torchenv/bin/python tools/st_anchor.py --model "$model" --threads 2 \
      --seconds "$secs" --corpus "$corpus" --backend "$b" 2>/dev/null | grep '^st .*workload=corpus' || true
  done
  for n in 1 4; do
    $py python/examples/throughput.py --model "$model" --corpus "$corpus" --threads 1 --seconds "$secs" \
      --precision int8 --python-threads $n
  done
  $py python/examples/throughput.py --model "$model" --corpus "$big" --threads 2 --seconds "$secs" --precision int8 \
    | sed 's/^python/direct/'
  rm -rf "$big.parquet"
  $py python/examples/ray_embed.py --model "$model" --input "$big" --output "$big.parquet" --workers 2 \
    --threads-per-worker 1 --precision int8 --batch-size 100 2>/dev/null | grep '^ray_embed' || true
done | tee /tmp/py_compare.out
python3 - /tmp/py_compare.out <<'PY'
import re, statistics, sys
from collections import defaultdict
m = defaultdict(list)
for line in open(sys.argv[1]):
    kv = dict(re.findall(r"(\w+)=([^\s]+)", line))
    head = line.split()[0]
    if "python_threads" in kv:
        m[("pythreads", kv["python_threads"])].append(float(kv["calls_per_s"]))
    elif head in ("rust", "python"):
        m[(head, kv["precision"])].append(float(kv["texts_per_s"]))
    elif head == "st":
        m[("st", kv["backend"])].append(float(kv["texts_per_s"]))
    elif head == "direct":
        m[("direct", "int8")].append(float(kv["texts_per_s"]))
    elif head == "ray_embed":
        m[("ray", "int8")].append(float(kv["texts_per_s"]))
        m[("ray_start", "s")].append(float(kv["ray_start_s"]))
med = {k: statistics.median(v) for k, v in m.items()}
for k, v in sorted(med.items()):
    print(f"median {k[0]} {k[1]}: {v:.1f}")
for p in ("fp32", "bf16", "int8"):
    if ("rust", p) in med and ("python", p) in med:
        print(f"ratio python/rust {p}: {med[('python', p)] / med[('rust', p)]:.3f} (target >= 0.95)")
if ("pythreads", "4") in med:
    print(f"ratio 4 python threads / 1: {med[('pythreads', '4')] / med[('pythreads', '1')]:.2f} (target >= 1.7)")
if ("ray", "int8") in med:
    print(f"ratio ray 2x1 / direct 2 threads: {med[('ray', 'int8')] / med[('direct', 'int8')]:.3f} (target >= 0.85)")
PY
