"""Exact (flat) search on the CPU at the miner's query counts: faiss's SIMD scan vs its BLAS path vs torch (not a test).

faiss 1.15 scans with its own SIMD loop below nq * d = 128,000 and calls BLAS above; vecrag moves the switch to
800 x threads (``vecrag.runtime.tune_faiss_flat``). This times one
search of ``nq`` queries (k 74: the miner's 64 candidates + a context of 10) of a random unit-vector bank, each
setting side by side, and prints a table in ms::

    .venv/bin/python benchmarks/flat_search.py --size 100000
"""

from __future__ import annotations

import argparse
import statistics
import time

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vecrag.runtime import set_threads  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=100_000, help="bank vectors")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--k", type=int, default=74)
    p.add_argument("--nq", default="16,64,256,2048", help="query counts (comma-separated)")
    p.add_argument("--reps", type=int, default=4)
    args = p.parse_args()
    threads = set_threads()
    import faiss

    rng = np.random.default_rng(0)
    v = rng.standard_normal((args.size, args.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(args.dim)
    index.add(v)
    vt = torch.from_numpy(v)
    cv = faiss.cvar
    tuned = (cv.distance_compute_blas_threshold, cv.distance_compute_blas_database_bs)

    def ms(fn) -> float:
        fn()
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t))
        return statistics.median(times)

    settings = {"faiss SIMD scan": (2**31 - 1, 1024), "faiss BLAS, 1,024 rows": (1, 1024),
                "faiss BLAS, 4,096 rows": (1, 4096), f"vecrag's {tuned}": tuned}
    print(f"exact search of a {args.size:,} x {args.dim} bank, k {args.k}, threads {threads}, faiss "
          f"{faiss.__version__}, median of {args.reps} (ms)")
    print(f"{'nq':>6} " + " ".join(f"{name:>24}" for name in [*settings, "torch matmul + topk"]))
    for nq in (int(x) for x in args.nq.split(",")):
        q = v[:nq] + 0.01
        row = []
        for thr, bs in settings.values():
            cv.distance_compute_blas_threshold, cv.distance_compute_blas_database_bs = thr, bs
            row.append(ms(lambda: index.search(q, args.k)))  # noqa: B023
        cv.distance_compute_blas_threshold, cv.distance_compute_blas_database_bs = tuned
        row.append(ms(lambda: torch.topk(torch.from_numpy(q) @ vt.T, args.k)))  # noqa: B023
        print(f"{nq:>6} " + " ".join(f"{x:>24.1f}" for x in row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
