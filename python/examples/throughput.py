#!/usr/bin/env python3
"""Texts per second of `SentenceEncoder.encode` from Python: the Rust `throughput` example's corpus
workload, and calls per second of several Python threads sharing one encoder.

    python throughput.py --model DIR --corpus FILE [--precision fp32|bf16|int8] [--threads 2]
        [--seconds 5] [--repeat K] [--python-threads N]

Prints `python workload=corpus-<n> texts=<n> threads=<t> median_ms=<m> texts_per_s=<r>
precision=<p>` (one `encode` call of every line of FILE, K times over: the Rust example's line
format), or with `--python-threads N`: `python python_threads=<N> threads=<t> precision=<p>
calls_per_s=<r>` (each of N Python threads calls `encode` on the corpus in a loop, the GIL
released while the encoder computes).
"""

import argparse
import statistics
import sys
import threading
import time

import transformer_encoder as te


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", required=True, help="one text a line")
    ap.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32")
    ap.add_argument("--threads", type=int, default=2, help="threads of the encoder")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=1, help="the corpus this many times over in one call")
    ap.add_argument("--python-threads", type=int, default=0, help="Python threads sharing one encoder")
    a = ap.parse_args(argv)
    if a.threads < 1 or a.repeat < 1 or a.python_threads < 0 or a.seconds <= 0:
        ap.error("--threads and --repeat at least 1, --python-threads at least 0, --seconds above 0")
    with open(a.corpus, encoding="utf-8") as f:
        texts = f.read().splitlines() * a.repeat
    enc = te.SentenceEncoder(a.model, precision=a.precision, threads=a.threads)
    for _ in range(2):
        enc.encode(texts)  # warm-up: workspaces, the team of threads
    if a.python_threads:
        stop = time.perf_counter() + a.seconds
        counts = [0] * a.python_threads

        def work(i):
            while time.perf_counter() < stop:
                enc.encode(texts)
                counts[i] += 1

        start = time.perf_counter()
        ts = [threading.Thread(target=work, args=(i,)) for i in range(a.python_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        rate = sum(counts) / (time.perf_counter() - start)
        print(f"python python_threads={a.python_threads} threads={a.threads} precision={a.precision} calls_per_s={rate:.2f}")
        return 0
    times = []
    end = time.perf_counter() + a.seconds
    while time.perf_counter() < end or len(times) < 3:
        t = time.perf_counter()
        enc.encode(texts)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(f"python workload=corpus-{len(texts)} texts={len(texts)} threads={a.threads} median_ms={med * 1e3:.2f} "
          f"texts_per_s={len(texts) / med:.1f} precision={a.precision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
