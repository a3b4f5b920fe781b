"""torch.topk vs vecrag.index.topk.block_topk on score matrices of the miner's and the evaluation's shapes
(not a test; prints a table). Both run side by side on the same random scores; "equal" checks the values.

    .venv/bin/python benchmarks/topk_bench.py                       # CPU: 256 x 100k fp32
    python benchmarks/topk_bench.py --device cuda --rows 1024 --cols 1000000 --dtype float16 --k 138
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import torch  # noqa: E402

from vecrag.index.topk import block_topk, fast_topk  # noqa: E402


def timed(fn, reps: int, device: str) -> float:
    """Median ms of ``reps`` calls after one warm-up."""
    fn()
    out = []
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", type=int, default=256, help="queries")
    ap.add_argument("--cols", type=int, default=100_000, help="bank vectors")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--k", type=int, nargs="+", default=[10, 138], help="k values to time")
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128], help="block widths to time")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--matmul", action="store_true", help="also time the score matmul (D=384) for scale")
    a = ap.parse_args()
    torch.manual_seed(0)
    dt = getattr(torch, a.dtype)
    q = torch.nn.functional.normalize(torch.randn(a.rows, 384, device=a.device), dim=1).to(dt)
    bank = torch.nn.functional.normalize(torch.randn(a.cols, 384, device=a.device), dim=1).to(dt)
    s = q @ bank.T  # real cosine scores: the value distribution the miner sees
    print(f"{a.rows} x {a.cols} {a.dtype} scores on {a.device}, median of {a.reps}")
    if a.matmul:
        print(f"matmul q @ bank.T: {timed(lambda: q @ bank.T, a.reps, a.device):.3f} ms")
    print("| k | torch.topk ms | block width | block_topk ms | speed-up | equal values |")
    print("|---|---:|---:|---:|---:|---|")
    for k in a.k:
        base = timed(partial(torch.topk, s, k, dim=1), a.reps, a.device)
        ref = torch.topk(s, k, dim=1).values
        rows = [("fast_topk (the default)", partial(fast_topk, s, k))]
        rows += [(f"{w}{' strided' if st else ''}", partial(block_topk, s, k, w, st))
                 for w in a.widths for st in (False, True)]
        for name, fn in rows:
            ms = timed(fn, a.reps, a.device)
            print(f"| {k} | {base:.3f} | {name} | {ms:.3f} | {base / ms:.2f}x | {torch.equal(fn()[0], ref)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
