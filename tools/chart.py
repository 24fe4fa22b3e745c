#!/usr/bin/env python3
"""Turn side-by-side runs of benches/compare.sh into one SVG chart (no dependencies).

    python3 tools/chart.py --title "Intel Xeon (AMX), 2 cores, 2026-12-06" OUT.svg RUN.txt...

Each RUN.txt is the output of `benches/compare.sh SECONDS fp32|int8|bf16` (one precision per
file, any number of files; several rounds of a runtime, `ROUNDS=n`, count by their median). Per shape (one group of bars), one bar per runtime and precision:
this crate, ONNX Runtime, OpenVINO and PyTorch, in float32, int8 and bf16, each bar's length its
median latency relative to the slowest bar of the group (shorter is faster), labelled in ms and
with the crate's time over its own in the same precision (under 1: the crate is faster). A runtime that did not run a shape has no bar.
"""

from __future__ import annotations

import argparse
import html
import re
import sys

RUNTIMES = {
    # first word of a line -> (name, colour)
    "encoder": ("this crate", "#c0392b"),
    "ort": ("ONNX Runtime", "#2471a3"),
    "openvino": ("OpenVINO", "#7d3c98"),
    "torch": ("PyTorch", "#d68910"),
}
ORDER = ["encoder", "ort", "openvino", "torch"]
PRECISIONS = ["fp32", "int8", "bf16"]


def parse_line(line: str):
    words = line.split()
    if not words or words[0] not in RUNTIMES:
        return None
    kv = dict(re.findall(r"(\w+)=([^\s]+)", line))
    if "median_ms" not in kv:
        return None
    rt = words[0]
    if rt == "encoder":
        prec = kv.get("precision", "fp32")
    elif rt == "ort":
        prec = "int8" if kv.get("quant", "none") == "int8" else "fp32"
    elif rt == "openvino":
        prec = kv.get("precision", "fp32")
    else:
        prec = {"float32": "fp32", "bfloat16": "bf16"}.get(kv.get("dtype", "float32"), kv.get("dtype"))
    shape = tuple(int(kv.get(k, d)) for k, d in
                  [("hidden", 0), ("heads", 0), ("inter", 0), ("seq", 0), ("batch", 1), ("layers", 1), ("threads", 1)])
    return shape, rt, prec, float(kv["median_ms"])


def shape_label(s) -> str:
    hidden, heads, inter, seq, batch, layers, threads = s
    name = {(768, 12, 3072): "BERT-base layer", (384, 12, 1536): "MiniLM layer"}.get((hidden, heads, inter),
                                                                                   f"{hidden}/{heads}/{inter}")
    if layers > 1:
        name = f"{layers} {name.replace(' layer', '')} layers"
    t = "thread" if threads == 1 else "threads"
    return f"{name}, seq {seq}, batch {batch}, {threads} {t}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--title", default="Latency side by side (benches/compare.sh)")
    ap.add_argument("out", help="the SVG to write")
    ap.add_argument("runs", nargs="+", help="outputs of benches/compare.sh")
    a = ap.parse_args(argv)
    data: dict = {}
    for path in a.runs:
        try:
            text = open(path).read()
        except OSError as e:
            ap.error(f"{path}: {e}")
        for line in text.splitlines():
            p = parse_line(line)
            if p:
                shape, rt, prec, ms = p
                data.setdefault(shape, {}).setdefault((rt, prec), []).append(ms)
    # Several rounds of a runtime (ROUNDS=n compare.sh): the median of their medians.
    for s in data.values():
        for key, v in s.items():
            v.sort()
            s[key] = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
    if not data:
        ap.error("no compare.sh lines (onnxruntime/ort, openvino, encoder, torch ... median_ms=) in the runs")

    shapes = [s for s in data if s[0] >= 384]  # the layer shapes (the seed case is not a workload)
    shapes.sort(key=lambda s: (-s[0], s[5], s[3], s[4], -s[6]))
    row_h, gap, left, width, top = 16, 18, 190, 460, 70
    rows = []
    for s in shapes:
        bars = [(rt, p, data[s][(rt, p)]) for p in PRECISIONS for rt in ORDER if (rt, p) in data[s]]
        rows.append((s, bars))
    height = top + 20 + sum(6 + len(b) * row_h + gap for _, b in rows)
    total_w = left + width + 190
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="22" font-size="15" font-weight="bold">{html.escape(a.title)}</text>',
           '<text x="10" y="38" fill="#555">median ms per call; each group\'s bars relative to its slowest '
           '(shorter is faster); crate/this: the crate\'s time over that bar\'s, same precision</text>']
    for i, rt in enumerate(ORDER):
        name, colour = RUNTIMES[rt]
        out.append(f'<rect x="{10 + i * 120}" y="50" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{24 + i * 120}" y="59">{name}</text>')
    y = top + 20
    for s, bars in rows:
        out.append(f'<text x="10" y="{y}" font-weight="bold">{html.escape(shape_label(s))}</text>')
        y += 6
        worst = max(ms for _, _, ms in bars)
        for rt, p, ms in bars:
            name, colour = RUNTIMES[rt]
            mine = data[s].get(("encoder", p))
            w = max(1.0, width * ms / worst)
            out.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end">{name} {p}</text>')
            out.append(f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" fill="{colour}"/>')
            ratio = f"   crate/this {mine / ms:.2f}" if mine and rt != "encoder" else ""
            out.append(f'<text x="{left + w + 4:.1f}" y="{y + 12}">{ms:.3g} ms{ratio}</text>')
            y += row_h
        y += gap
    out.append("</svg>")
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")
    print(f"chart: {len(rows)} shapes, {sum(len(b) for _, b in rows)} bars -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
