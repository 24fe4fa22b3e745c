#!/usr/bin/env python3
"""Fit the piecewise polynomial of the exact GELU's AVX-512 kernel and write it as Rust.

The kernel computes q(u) = P(X > u) = erfc(u / sqrt 2) / 2 for u = |x| from a table of N intervals
of width w centred at i w (i = round(u / w), so they cover [0, (N - 1/2) w)): on interval i,
q(i w + t) = sum_k c[k][i] t^k for t in [-w/2, w/2], evaluated by Horner in float32 fused
multiply-adds (t = u - i w is exact: w is a multiple of 2^-5); then gelu(x) = x q(|x|) for x < 0
and x (1 - q(x)) otherwise. The coefficients minimise the *relative* error of q on each interval
(float64 weighted least squares on Chebyshev nodes, reweighted by Lawson's iteration towards the
minimax fit), so the left tail keeps its relative accuracy; rounded to float32.

It then replays the kernel's float32 arithmetic on a dense grid and random points of [-CLAMP, 8] and
prints the worst error of gelu in ulps against math.erfc (float64); the Rust tests check the same
bound on the kernel itself.

Setup: python3 -m venv /tmp/fitenv && /tmp/fitenv/bin/pip install numpy
Run:   /tmp/fitenv/bin/python tools/fit_gelu_table.py > kernels/src/simd/gelu_coeffs.rs
"""
import math, sys
import numpy as np

N, W, DEGREE = 32, 7.0 / 32.0, 7
# The kernel clamps u to CLAMP, just below (N - 1/2) w = 6.890625 (so the index stays below N for
# huge x > 0, where 1 - q rounds to 1), and sends x < -CLAMP, where the clamp would matter, to the
# unclamped formula.
CLAMP = 6.8906


def q(u):
    return 0.5 * math.erfc(u / math.sqrt(2.0))


def fit_interval(i, nodes=96, rounds=40):
    h = 0.5 * W
    center = i * W
    k = np.arange(nodes)
    t = np.concatenate([h * np.cos((k + 0.5) * np.pi / nodes), [-h, h]])
    y = np.array([q(center + v) for v in t])
    # Relative error: rows divided by the value; powers of t / h keep the system well scaled.
    a = np.vander(t / h, DEGREE + 1, increasing=True) / y[:, None]
    weight = np.ones_like(y)
    for _ in range(rounds):
        s = np.sqrt(weight)
        c, *_ = np.linalg.lstsq(a * s[:, None], s, rcond=None)
        r = np.abs(a @ c - 1.0)
        weight = weight * (r + 1e-300)
        weight /= weight.sum()
    return (c / np.array([h**j for j in range(DEGREE + 1)])).astype(np.float32)


def fma32(a, b, c):
    # float32 a * b is exact in float64; the sum's float64 rounding is far below float32's.
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def kernel_gelu(table, x):
    """The AVX-512 kernel's float32 arithmetic for one x >= -CLAMP."""
    x = np.float32(x)
    u = np.float32(min(abs(x), np.float32(CLAMP)))
    i = int(np.rint(np.float32(u * np.float32(1.0 / W))))
    t = np.float32(u - np.float32(i * W))
    p = table[DEGREE][i]
    for k in range(DEGREE - 1, -1, -1):
        p = fma32(p, t, table[k][i])
    phi = p if x < 0 else np.float32(1.0 - p)
    return np.float32(x * phi)


def worst_ulps(table, n=200_000):
    rng = np.random.default_rng(7)
    xs = np.concatenate([
        np.linspace(-CLAMP, 8.0, n, dtype=np.float32),
        rng.uniform(-CLAMP, 8.0, n).astype(np.float32),
        np.float32([0.0, 1e-30, -1e-30, 1e-8, -1e-8]),
        np.float32(np.arange(-7 * 64, 8 * 64 + 1) / 64.0), np.float32([1e4, 3e38]),
    ])
    worst = (0.0, 0.0)
    for x in xs:
        if x < -np.float32(CLAMP):
            continue
        truth = float(x) * 0.5 * math.erfc(-float(x) / math.sqrt(2.0))
        if truth == 0.0:
            continue
        ulp = 2.0 ** (math.floor(math.log2(abs(truth))) - 23)
        e = abs(float(kernel_gelu(table, x)) - truth) / ulp
        if e > worst[0]:
            worst = (e, float(x))
    return worst


def main():
    per_interval = [fit_interval(i) for i in range(N)]
    table = [[per_interval[i][k] for i in range(N)] for k in range(DEGREE + 1)]
    err, at = worst_ulps(table)
    print(f"// Written by tools/fit_gelu_table.py: q(u) = erfc(u / sqrt 2) / 2 on {N} intervals of width")
    print(f"// {W} centred at i w, degree {DEGREE} in t = u - i w, relative minimax fits rounded to float32;")
    print(f"// replaying the kernel's float32 arithmetic on x >= -{CLAMP}, gelu's worst error is {err:.2f} ulp")
    print(f"// (at x = {at:.6g}).")
    print("#[allow(clippy::excessive_precision)]")
    print(f"const PHI_TABLE: [[f32; {N}]; {DEGREE + 1}] = [")
    for k in range(DEGREE + 1):
        print(f"    // t^{k}")
        print("    [")
        for v in table[k]:
            print(f"        {np.format_float_scientific(np.float32(v), unique=True, trim='-')},")
        print("    ],")
    print("];")
    print(f"worst {err:.3f} ulp at x = {at}", file=sys.stderr)


if __name__ == "__main__":
    main()
