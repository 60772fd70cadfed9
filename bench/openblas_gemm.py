#!/usr/bin/env python3
"""The CPU reference of the GEMM rows of `deno task bench`: numpy float32 matmul (through the BLAS
Debian's numpy is linked to: OpenBLAS when libopenblas0-pthread is installed, else the reference
BLAS, about 12x slower) at the products of bench/matmul.ts, in the same layouts:

  forward  Y  = X[rows,in] @ W[out,in].T   m=rows n=out k=in
  dX       dX = dY[rows,out] @ W[out,in]   m=rows n=in  k=out
  dW       dW = dY[rows,out].T @ X[rows,in] m=out n=in  k=rows

(the bias add of the forward is not timed: numpy has no fused GEMM + bias). One JSON line per
product on stdout: {"kernel":"gemm_reference","m":..,"n":..,"k":..,"product":..,"ms":..,
"gflops":..,"blas":..,"threads":..}, ms the median of --reps timed calls after one warm-up call.
The BLAS library loaded (from /proc/self/maps) goes to stderr too.

Run with Debian's numpy:  /usr/bin/python3 bench/openblas_gemm.py --shapes 512x256x256,... [--reps 5]
(shapes are rows x in x out of a linear layer, as bench/matmul.ts lists them).
"""

import argparse
import json
import os
import sys
import time

# Machine notes: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE may be set in this environment and pick a
# slow kernel; OpenBLAS reads them when it loads, so they go before numpy is imported.
for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(var, None)

import numpy as np  # noqa: E402


def blas_libraries():
    """Paths of the BLAS / LAPACK libraries this process has loaded."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if "blas" in os.path.basename(p))


def blas_threads():
    try:
        from threadpoolctl import threadpool_info  # optional

        return [(i.get("internal_api"), i.get("num_threads")) for i in threadpool_info()]
    except Exception:
        return None


def timed(fn, reps):
    fn()  # warm-up: first touch of the output, the BLAS thread pool starting
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    mid = len(times) // 2
    return times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", required=True, help="rows x in x out, comma-separated")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows_out = []
    for spec in args.shapes.split(","):
        rows, inf, outf = (int(v) for v in spec.lower().split("x"))
        x = rng.standard_normal((rows, inf), dtype=np.float32)
        w = rng.standard_normal((outf, inf), dtype=np.float32)
        dy = rng.standard_normal((rows, outf), dtype=np.float32)
        y = np.empty((rows, outf), np.float32)
        dx = np.empty((rows, inf), np.float32)
        dw = np.empty((outf, inf), np.float32)
        products = [
            ("forward", (rows, outf, inf), lambda: np.matmul(x, w.T, out=y)),
            ("dX", (rows, inf, outf), lambda: np.matmul(dy, w, out=dx)),
            ("dW", (outf, inf, rows), lambda: np.matmul(dy.T, x, out=dw)),
        ]
        for product, (m, n, k), fn in products:
            s = timed(fn, args.reps)
            rows_out.append({
                "kernel": "gemm_reference",
                "m": m, "n": n, "k": k, "product": product,
                "ms": s * 1000,
                "gflops": 2 * m * n * k / s / 1e9,
            })
    libs = blas_libraries()
    blas = ", ".join(libs) or "unknown"
    print(f"openblas_gemm: numpy {np.__version__}, BLAS {blas}", file=sys.stderr)
    threads = blas_threads()
    for row in rows_out:
        row["blas"] = blas
        if threads is not None:
            row["threads"] = threads
        print(json.dumps(row))


if __name__ == "__main__":
    main()
