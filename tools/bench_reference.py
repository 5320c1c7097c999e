#!/usr/bin/env python3
"""Reference timings for `nvg bench engine`: the same ops at the same shapes in PyTorch (CPU) and
NumPy, one process, a fixed thread count.

The Rust benchmark starts this script with `--serve` and talks to it over stdin/stdout so that our
run and the reference run of each case alternate in the same time window (a VM's speed drifts; an
interleaved comparison is robust to that, a separate run an hour later is not).

Protocol (one JSON object per line):
  -> {"case": NAME, "iters": K}
  <- {"case": NAME, "seconds": best-of-K seconds, "impl": "torch" | "numpy"}   or {"case": NAME, "error": MSG}
The first line the script prints is {"ready": true, "torch": VERSION or null, "numpy": VERSION, ...}.

Without --serve it times every case once and prints a table (for a quick look).
"""

import argparse
import json
import os
import sys
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for torch / BLAS (default: all CPUs)")
    p.add_argument("--serve", action="store_true", help="answer timing requests on stdin (used by nvg bench)")
    return p.parse_args()


args = parse_args()
# Thread counts must be set before numpy / torch load their BLAS and OpenMP runtimes. Idle worker
# threads must not spin while the Rust side runs (OpenBLAS spins ~2^28 cycles after each call by
# default, OpenMP runtimes up to 200 ms), or they would slow down the measurement that follows.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(args.threads)
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
os.environ["GOMP_SPINCOUNT"] = "0"
os.environ["KMP_BLOCKTIME"] = "0"
os.environ["OPENBLAS_THREAD_TIMEOUT"] = "4"

import numpy as np  # noqa: E402

try:
    import torch  # noqa: E402

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
except Exception:  # torch is optional: numpy covers the GEMM cases
    torch = None


def make_cases():
    """name -> (impl, zero-argument function). Shapes mirror tools/src/bench.rs."""
    rng = np.random.default_rng(0)

    def arr(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    cases = {}
    for m, k, n in [(514, 1024, 7168), (514, 5120, 1024), (1026, 512, 3584)]:
        x, w, b = arr(m, k), arr(n, k), arr(n)
        name = f"linear {m}x{k}·{k}x{n}"
        if torch is not None:
            tx, tw, tb = (torch.from_numpy(a) for a in (x, w, b))
            cases[name] = ("torch", lambda tx=tx, tw=tw, tb=tb: torch.nn.functional.linear(tx, tw, tb))
        cases[name + " (numpy)"] = ("numpy", lambda x=x, w=w, b=b: x @ w.T + b)
    g = arr(2080, 1792)
    if torch is not None:
        tg = torch.from_numpy(g)
        cases["row sum 2080x1792"] = ("torch", lambda tg=tg: tg.sum(0))
    cases["row sum 2080x1792 (numpy)"] = ("numpy", lambda g=g: g.sum(0))
    if torch is not None:
        for b, h, n in [(2, 16, 257), (2, 8, 513)]:
            q, k, v = (torch.from_numpy(arr(b, h, n, 64)) for _ in range(3))
            f = torch.nn.functional.scaled_dot_product_attention
            cases[f"attention B{b} H{h} N{n} D64"] = ("torch", lambda q=q, k=k, v=v, f=f: f(q, k, v))
        for c, hw in [(512, 16), (128, 256)]:
            x = torch.from_numpy(arr(1, c, hw, hw))
            w = torch.from_numpy(arr(c, c, 3, 3))
            bias = torch.from_numpy(arr(c))
            f = torch.nn.functional.conv2d
            cases[f"conv3x3 {c}->{c} {hw}x{hw}"] = ("torch", lambda x=x, w=w, bias=bias, f=f: f(x, w, bias, padding=1))
    return cases


def best_of(fn, iters):
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    cases = make_cases()
    for _, fn in cases.values():  # warm up: allocator, OpenMP pool, kernel selection
        fn()
    info = {
        "ready": True,
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "threads": args.threads,
        "cases": sorted(cases),
    }
    if not args.serve:
        print(json.dumps(info))
        for name, (impl, fn) in cases.items():
            print(f"{name:40s} {impl:6s} {best_of(fn, 10) * 1e3:9.3f} ms")
        return
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        name = req["case"]
        if name not in cases:
            print(json.dumps({"case": name, "error": "unknown case"}), flush=True)
            continue
        impl, fn = cases[name]
        print(json.dumps({"case": name, "seconds": best_of(fn, int(req.get("iters", 5))), "impl": impl}), flush=True)


if __name__ == "__main__":
    main()
