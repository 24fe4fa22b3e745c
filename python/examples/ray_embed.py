#!/usr/bin/env python3
"""Embed a corpus on Ray Data, one transformer_encoder.SentenceEncoder per worker, into Parquet.

    python ray_embed.py --model DIR --input FILE --output OUT.parquet --workers N \
        --threads-per-worker T [--precision fp32|bf16|int8] [--batch-size B] [--address ADDR]

FILE is a text file (one text a line) or a Parquet dataset with a `text` column. OUT.parquet is a
Parquet dataset (a folder) with columns `text` and `embedding` (a fixed-size list of float32), in
input order. Workers times threads per worker should equal the cores Ray may use.

On a local Ray (the default: `ray.init()` starts one on this machine) or on a cluster, unchanged:
pass `--address auto` on a node of a running cluster (or `--address ray://HEAD:10001`, or set
RAY_ADDRESS); the model folder and the input must be readable at the same path on every node
(shared storage, or `s3://...` for the input and output). The transformer-encoder wheel must be
installed on every node (`pip install ./python`, or a runtime_env with the wheel).

Prints one line: `ray_embed texts=... workers=... threads_per_worker=... precision=...
ray_start_s=... embed_s=... texts_per_s=... total_s=...`, where ray_start_s is ray.init() plus the
time until the first batch starts (workers starting, models loading), embed_s the time from the
first batch's start to the last one's end, texts_per_s = texts / embed_s, and busy the share of
workers x embed_s the encoders spent encoding (the rest: Ray moving batches, workers waiting).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import pyarrow as pa
import ray


class Embedder:
    """One encoder per Ray worker (the model loaded once, in the constructor)."""

    def __init__(self, model: str, precision: str, threads: int):
        import transformer_encoder

        self.encoder = transformer_encoder.SentenceEncoder(model, precision=precision, threads=threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        t0 = time.time()
        texts = batch.column("text").to_pylist()
        emb = self.encoder.encode(texts)
        t1 = time.time()
        n, dim = emb.shape
        return pa.table(
            {
                "text": batch.column("text"),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), dim),
                "_t0": pa.array(np.full(n, t0)),
                "_t1": pa.array(np.full(n, t1)),
                "_dt": pa.array(np.full(n, (t1 - t0) / max(n, 1))),
            }
        )


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a sentence-transformers folder")
    ap.add_argument("--input", required=True, help="a text file (one text a line) or a Parquet dataset with `text`")
    ap.add_argument("--output", required=True, help="the Parquet dataset to write (a folder)")
    ap.add_argument("--workers", type=int, required=True, help="Ray workers, each with its own encoder")
    ap.add_argument("--threads-per-worker", type=int, required=True, help="threads of each encoder")
    ap.add_argument("--precision", choices=["fp32", "bf16", "int8"], default="fp32")
    ap.add_argument("--batch-size", type=int, default=256, help="texts per batch handed to a worker")
    ap.add_argument("--address", default=None, help="a Ray cluster (`auto`, `ray://HEAD:10001`); default: local")
    a = ap.parse_args(argv)
    for name in ("workers", "threads_per_worker", "batch_size"):
        if getattr(a, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(a, name)}")
    if not os.path.isdir(a.model):
        ap.error(f"--model {a.model}: not a folder")
    if "://" not in a.input and not os.path.exists(a.input):
        ap.error(f"--input {a.input}: no such file or folder")
    return a


def read(path: str) -> "ray.data.Dataset":
    # Reading takes no CPU of its own: the workers hold every core (workers x threads), and a
    # read task waiting for a free one would never run.
    if os.path.isdir(path) or path.endswith(".parquet"):
        return ray.data.read_parquet(path, columns=["text"], num_cpus=0)
    return ray.data.read_text(path, num_cpus=0)


def main(argv=None) -> int:
    a = parse(argv if argv is not None else sys.argv[1:])
    start = time.time()
    ray.init(address=a.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the output in input order
    ctx.enable_progress_bars = False
    # Start every worker (its model loaded) before the first batch: otherwise the first worker
    # embeds alone while the others load, and that start-up lands inside embed_s.
    ctx.wait_for_min_actors_s = 600
    ds = read(a.input).map_batches(
        Embedder,
        fn_constructor_kwargs={"model": os.path.abspath(a.model), "precision": a.precision, "threads": a.threads_per_worker},
        concurrency=a.workers,
        num_cpus=a.threads_per_worker,
        batch_size=a.batch_size,
        batch_format="pyarrow",
    )
    ds = ds.materialize()
    n = ds.count()
    first, last, busy = ds.min("_t0"), ds.max("_t1"), ds.sum("_dt")
    ds.drop_columns(["_t0", "_t1", "_dt"]).write_parquet(a.output)
    total = time.time() - start
    embed = max(last - first, 1e-9)
    print(
        f"ray_embed texts={n} workers={a.workers} threads_per_worker={a.threads_per_worker} "
        f"precision={a.precision} ray_start_s={first - start:.2f} embed_s={embed:.3f} "
        f"texts_per_s={n / embed:.1f} busy={busy / (a.workers * embed):.2f} total_s={total:.2f}"
    )
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
