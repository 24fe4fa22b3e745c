"""The Ray Data example on a local Ray with 2 workers: the corpus' embeddings equal one direct encode call's,
bit for bit, in input order."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import transformer_encoder as te

from conftest import CORPUS, ROOT, corpus

if os.environ.get("TE_REQUIRE_RAY"):
    import pyarrow.parquet as pq
    import ray  # noqa: F401  (CI: ray must be there)
else:
    pytest.importorskip("ray")
    pq = pytest.importorskip("pyarrow.parquet")

EXAMPLE = ROOT / "python" / "examples" / "ray_embed.py"


def _run(model_dir, out, *extra):
    cmd = [sys.executable, str(EXAMPLE), "--model", model_dir, "--input", str(CORPUS), "--output", str(out),
           "--workers", "2", "--threads-per-worker", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_ray_example_equals_direct_encode(model_dir, tmp_path):
    out = tmp_path / "emb.parquet"
    r = _run(model_dir, out, "--precision", "int8", "--batch-size", "16")
    assert r.returncode == 0, r.stderr[-3000:]
    line = [l for l in r.stdout.splitlines() if l.startswith("ray_embed ")]
    assert line and "texts=64" in line[0], r.stdout
    files = sorted(Path(out).glob("*.parquet"))
    assert len(files) > 1  # several batches on the two workers
    table = __import__("pyarrow").concat_tables([pq.read_table(f) for f in files])
    assert table.column_names == ["text", "embedding"]
    texts = corpus()
    assert table.column("text").to_pylist() == texts  # input order
    got = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    want = te.SentenceEncoder(model_dir, precision="int8", threads=2).encode(texts)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_ray_example_refuses_bad_flags(model_dir, tmp_path):
    r = _run(model_dir, tmp_path / "x", "--precision", "int4")
    assert r.returncode == 2 and "--precision" in r.stderr
    r = subprocess.run([sys.executable, str(EXAMPLE), "--model", model_dir, "--input", str(CORPUS), "--output",
                        str(tmp_path / "y"), "--workers", "0", "--threads-per-worker", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "--workers" in r.stderr
    r = _run(model_dir, tmp_path / "z", "--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
