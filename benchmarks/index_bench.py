"""Index benchmark: build time, queries/s (batch 1 and batch 1024) and Recall@10 against exact search.

Not a test; prints a Markdown table. Vectors are random unit vectors (the hardest case for IVF/PQ: no
cluster structure) unless ``--data clustered`` (Gaussian blobs, closer to real embeddings). Queries are
drawn from the same distribution, independently of the bank.

    python benchmarks/index_bench.py                       # 100k x 384, CPU, flat/ivf/hnsw/ivfpq
    python benchmarks/index_bench.py --sizes 1000000,10000000 --device cuda --types flat,ivf,ivfpq
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402


def make_data(n: int, dim: int, kind: str, seed: int) -> np.ndarray:
    """Unit vectors, random or clustered: the generator of benchmarks/scaling.py (one for both benchmarks)."""
    from scaling import random_unit  # benchmarks/ is on sys.path when a script there runs

    return random_unit(n, dim, seed, "cpu", data=kind)


def qps(index, q: np.ndarray, k: int, batch: int, budget_s: float = 3.0) -> float:  # noqa: ANN001
    done, t0 = 0, time.perf_counter()
    while True:
        for s in range(0, len(q), batch):
            index.search(q[s:s + batch], k)
            done += len(q[s:s + batch])
            if time.perf_counter() - t0 > budget_s and done >= batch:
                return done / (time.perf_counter() - t0)
        if batch >= len(q):
            return done / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000", help="comma-separated bank sizes")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--types", default="flat,ivf,hnsw,ivfpq")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--data", default="random", choices=["random", "clustered"])
    ap.add_argument("--queries", type=int, default=1024, help="query set for recall and batch-1024 speed")
    ap.add_argument("--threads", type=int, default=None, help="faiss/torch threads (default: all cores)")
    ap.add_argument("--fp16", action="store_true", help="GPU FAISS: store vectors / lookup tables in fp16")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import faiss
    import torch

    from vecrag.index.build import build_from_vectors
    from vecrag.index.search import ExactTorchIndex, FaissIndex, recall_vs_exact

    threads = args.threads or os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    torch.set_num_threads(threads)
    print(f"# index_bench: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
          f"({threads} threads), faiss {faiss.__version__}, torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name(0)})" if args.device == "cuda" else "")
          + f", {args.data} unit vectors, {args.dim}-D, {args.queries} queries, k=10\n", flush=True)
    print("| N | index | params | device | build s | q/s batch 1 | q/s batch 1024 | Recall@10 vs exact |")
    print("|---|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.sizes.split(",")]:
        x = make_data(n, args.dim, args.data, args.seed)
        q = make_data(args.queries, args.dim, args.data, args.seed + 1) if args.data == "random" else (
            x[np.random.default_rng(args.seed + 1).integers(0, n, args.queries)]
            + 0.05 * make_data(args.queries, args.dim, "random", args.seed + 2))
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
        t = time.perf_counter()
        exact = ExactTorchIndex(x, device=args.device)
        rows = [("exact-torch", exact, time.perf_counter() - t)]
        for kind in args.types.split(","):
            t = time.perf_counter()
            idx: FaissIndex = build_from_vectors(x, kind, device=args.device, threads=threads, progress=False,
                                                 seed=args.seed)
            if args.device == "cuda" and args.fp16 and idx.gpu_index is not None:
                idx = FaissIndex(idx.cpu_index, kind, idx.params, device="cuda", vectors=x, fp16=True)
            rows.append((kind, idx, time.perf_counter() - t))
        for name, idx, build_s in rows:
            r = 1.0 if name == "exact-torch" else recall_vs_exact(idx, exact, q, k=10)
            q1 = qps(idx, q[:256], 10, 1)
            qb = qps(idx, q, 10, 1024)
            params = ", ".join(f"{k}={v}" for k, v in getattr(idx, "params", {}).items())
            print(f"| {n:,} | {name} | {params} | {idx.device} | {build_s:.1f} | {q1:,.0f} | {qb:,.0f} | {r:.3f} |",
                  flush=True)
        del x, rows
    sys.stdout.flush()


if __name__ == "__main__":
    main()
