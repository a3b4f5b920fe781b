"""Scaling benchmark (not a test): retriever training samples/s with mining on, and index build / speed / recall.

Two parts, each runnable on its own (one GPU machine command is limited to 10 minutes)::

    # (1) training samples/s, mining none/sync/async, backend torch (exact matmul top-k) and faiss (flat, CPU)
    python benchmarks/scaling.py --what train --sizes 1e6 --device cuda --backends torch,faiss --out s.json
    # (2) index: build s, queries/s (10k-query batch), Recall@10 vs exact (1,000 sampled queries), memory
    python benchmarks/scaling.py --what index --sizes 1e6 --device cuda --types torch,flat,ivf,ivfpq --out s.json

Bank vectors are random unit vectors (``--data clustered``: Gaussian blobs, closer to real embeddings),
generated with torch (on the GPU when ``--device cuda``) in chunks. Part (1) reuses the real trainer path of
``benchmarks/train_retriever.py`` (Trainer + RetrieverTask, ``measure``) on a random bank written once to
``--workdir`` (fp16, 20 chunks an article) and reused by later commands. Part (2) uses ``vecrag.index.search``:
FAISS indexes are searched on the CPU (faiss-cpu: faiss-gpu has no pip wheels); with ``--device cuda``
IVF / IVF-PQ are built through ``build_from_vectors(device="cuda")``, i.e. k-means and list assignment in
torch on the GPU (``vecrag.index.ivf_torch``; faiss-gpu instead where installed), and each row's params say which
path trained it (``train=torch-cuda``, ``faiss-gpu`` or ``faiss-cpu``); ``torch`` is
``ExactTorchIndex`` on ``--device`` (fp16 on CUDA), the GPU search path we measure. IVF uses nlist =
4 sqrt(N) and sweeps ``--nprobes``; IVF-PQ uses ``--pq-m`` x ``--nbits`` codes, with and without exact
re-ranking of ``--refine`` x k candidates. The exact fp32 ground truth is computed once per size for the
first ``--gt-queries`` queries (on the GPU when there is one).

Progress goes to stderr with timings; after every measurement the rows so far are written to ``--out``
(JSON, atomically; an existing file's rows are kept, so several commands accumulate into one file and a
killed run keeps what it measured). A Markdown table of this run's rows is printed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def rss_mb() -> dict[str, float]:
    """Current and peak resident memory of this process (MB)."""
    cur = 0.0
    with open("/proc/self/statm") as f:
        cur = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return {"rss_mb": round(cur, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def gpu_mem_mb() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def reset_gpu_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def random_unit(n: int, dim: int, seed: int, device: str, *, data: str = "random", out_dtype: Any = np.float32,
                step: int = 1 << 20) -> np.ndarray:
    """n x dim unit vectors, chunk by chunk into a host array (torch on a GPU, numpy on the CPU)."""
    import torch

    if device == "cpu":  # numpy's generator is several times faster than torch.randn on the CPU
        rng = np.random.default_rng(seed)
        centers_np = rng.standard_normal((max(1, n // 100), dim), dtype=np.float32) if data == "clustered" else None
        out = np.empty((n, dim), dtype=out_dtype)
        for s in range(0, n, step):
            e = min(n, s + step)
            x = rng.standard_normal((e - s, dim), dtype=np.float32)
            if centers_np is not None:
                x = centers_np[rng.integers(0, len(centers_np), e - s)] + 0.5 * x
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out
    g = torch.Generator(device=device).manual_seed(seed)
    centers = (torch.randn(max(1, n // 100), dim, generator=g, device=device) if data == "clustered" else None)
    out = np.empty((n, dim), dtype=out_dtype)
    for s in range(0, n, step):
        e = min(n, s + step)
        x = torch.randn(e - s, dim, generator=g, device=device)
        if centers is not None:
            idx = torch.randint(0, len(centers), (e - s,), generator=g, device=device)
            x = centers[idx] + 0.5 * x
        x = torch.nn.functional.normalize(x, dim=1)
        out[s:e] = x.cpu().numpy().astype(out_dtype, copy=False)
    return out


class Results:
    """Rows of measurements, rewritten to ``path`` (atomically) after every row."""

    def __init__(self, path: str | None, meta: dict[str, Any]):
        import json

        self.path, self.meta, self.new = path, meta, []
        self.old: list[dict[str, Any]] = []
        if path and Path(path).exists():
            self.old = json.loads(Path(path).read_text()).get("rows", [])

    def add(self, row: dict[str, Any]) -> None:
        from vecrag.fsutil import atomic_write_json

        row = {**row, "run": self.meta["started"], "device": self.meta["device"], "host": self.meta["host"]}
        self.new.append(row)
        say("  " + ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("run", "host")))
        if self.path:
            atomic_write_json(self.path, {"meta": self.meta, "rows": self.old + self.new})


# ---------------------------------------------------------------------------------------------------
# (1) retriever training with mining
# ---------------------------------------------------------------------------------------------------
def cached_bank(workdir: Path, n: int, dim: int, device: str, seed: int = 0) -> Any:
    """A random fp16 bank (20 chunks an article) in ``workdir``, written once and reused."""
    from vecrag.bank.store import Bank, EncoderInfo, write_bank
    from vecrag.errors import VecragError

    path = workdir / f"bank-{n}x{dim}"
    try:
        return Bank.open(path)
    except VecragError:
        pass
    t = time.perf_counter()
    vecs = random_unit(n, dim, seed, device, out_dtype=np.float16)
    arts = np.arange(n, dtype=np.int64) // 20
    say(f"bank {n:,} x {dim}: vectors in {time.perf_counter() - t:.1f} s; writing {path}")
    bank = write_bank(path, vecs, article_ids=arts, positions=(np.arange(n) % 20).astype(np.int32),
                      texts=[f"c{i}" for i in range(n)], titles=[f"a{a}" for a in range(int(arts[-1]) + 1)],
                      encoder=EncoderInfo("random", dim), dtype="float16")
    say(f"bank {n:,} written in {time.perf_counter() - t:.1f} s")
    return bank


def run_train(args: argparse.Namespace, res: Results) -> None:
    from train_retriever import measure  # benchmarks/train_retriever.py: the real Trainer + RetrieverTask path

    workdir = Path(args.workdir)
    for n in args.sizes:
        bank = cached_bank(workdir, n, args.dim, args.device)
        for backend in args.backends:
            for mode in args.modes:
                if mode == "none" and backend != args.backends[0]:
                    continue  # no mining: the backend plays no part
                ns = SimpleNamespace(batch=args.batch, accum=1, steps=args.steps, log_every=args.log_every,
                                     device=args.device, context=args.context, neg=args.neg, k=args.k,
                                     backend=backend, timeout=args.timeout, hidden=args.hidden)
                reset_gpu_peak()
                say(f"train n={n:,} mining={mode} backend={backend}: {args.steps} steps of batch {args.batch}")
                t = time.perf_counter()
                r = measure(bank, workdir / f"run-{n}-{mode}-{backend}-{time.time_ns()}", mode, ns)
                res.add({"part": "train", "n": n, "dim": args.dim, "mining": mode,
                         "backend": backend if mode != "none" else None,
                         "search_on": ("cpu" if backend == "faiss" else args.device) if mode != "none" else None,
                         "samples_per_s": round(r["samples_per_s"], 1), "batch": args.batch, "k": args.k,
                         "negatives": args.neg, "async_hits": r["hits"], "async_fallbacks": r["fallbacks"],
                         "wall_s": round(time.perf_counter() - t, 1), "gpu_mem_mb": gpu_mem_mb(), **rss_mb()})


# ---------------------------------------------------------------------------------------------------
# (2) indexes
# ---------------------------------------------------------------------------------------------------
def timed_qps(index: Any, q: np.ndarray, k: int, batch: int, budget_s: float) -> tuple[float, int]:
    """Queries/s over batches of ``batch`` queries, stopping after the batch that passes ``budget_s``."""
    done, t0 = 0, time.perf_counter()
    for s in range(0, len(q), batch):
        index.search(q[s:s + batch], k)
        done += len(q[s:s + batch])
        if time.perf_counter() - t0 > budget_s:
            break
    return done / max(time.perf_counter() - t0, 1e-9), done


def recall_at(ids: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(a[:k][a[:k] >= 0]) & set(b[:k])) / k for a, b in zip(ids, gt, strict=True)]))


def run_index(args: argparse.Namespace, res: Results) -> None:
    for n in args.sizes:
        index_one_size(args, res, n)


def index_one_size(args: argparse.Namespace, res: Results, n: int) -> None:
    import torch

    from vecrag.index.build import build_from_vectors, default_nlist
    from vecrag.index.search import ExactTorchIndex

    gpu = args.device == "cuda"
    t = time.perf_counter()
    x = random_unit(n, args.dim, args.seed, args.device, data=args.data)
    q = random_unit(args.queries, args.dim, args.seed + 1, args.device, data="random")
    if args.data == "clustered":  # queries near bank points, like real next-chunk queries
        rng = np.random.default_rng(args.seed + 2)
        q = x[rng.integers(0, n, args.queries)] + 0.1 * q
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    say(f"index n={n:,}: {args.data} data + {args.queries:,} queries in {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    gq = q[:args.gt_queries]
    exact = ExactTorchIndex(x, device=args.device, dtype=torch.float32)
    gt = exact.search(gq, 10)[1]
    del exact
    say(f"  exact fp32 ground truth for {len(gq):,} queries in {time.perf_counter() - t:.1f} s")
    base = {"part": "index", "n": n, "dim": args.dim, "data": args.data, "k": 10, "gt_queries": len(gq)}

    def measure(name: str, idx: Any, build_s: float, search_on: str, **params: Any) -> None:
        if search_on == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        rec = recall_at(idx.search(gq, 10)[1], gt)
        t = time.perf_counter() - t
        if t > args.qps_budget:  # slow (e.g. flat on a small CPU): the recall batch is the timing
            qps, done = len(gq) / t, len(gq)
        else:
            qps, done = timed_qps(idx, q, 10, args.batch, args.qps_budget)
        res.add({**base, "index": name, "params": params, "search_on": search_on, "build_s": round(build_s, 2),
                 "queries_per_s": round(qps, 1), "qps_queries": done, "batch": args.batch,
                 "recall_at_10": round(rec, 4), "gpu_mem_mb": gpu_mem_mb() if search_on == "cuda" else None,
                 **rss_mb()})

    for kind in args.types:
        reset_gpu_peak()
        say(f"  build {kind} over {n:,} vectors")
        t = time.perf_counter()
        if kind == "torch":
            idx = ExactTorchIndex(x, device=args.device, dtype=torch.float16 if gpu else torch.float32)
            measure("exact-torch", idx, time.perf_counter() - t, idx.device, dtype=idx.params["dtype"])
        elif kind == "flat":
            idx = build_from_vectors(x, "flat", device="cpu", threads=args.threads, progress=False)
            measure("flat", idx, time.perf_counter() - t, "cpu")
        elif kind in ("ivf", "ivfpq"):
            kw: dict[str, Any] = {"nlist": args.nlist or default_nlist(n)}
            if kind == "ivfpq":
                kw.update(m=args.pq_m, nbits=args.nbits, refine=0)
            idx = build_from_vectors(x, kind, device=args.device, threads=args.threads, progress=False,
                                     seed=args.seed, **kw)
            build_s = time.perf_counter() - t
            train = getattr(idx, "trained_with", "faiss-cpu")
            say(f"  {kind} built in {build_s:.1f} s ({kw}, train={train})")
            for nprobe in args.nprobes:
                idx.set_search_params(nprobe=nprobe)
                for refine in ([0, args.refine] if kind == "ivfpq" and args.refine else [0]):
                    idx.refine = refine  # re-rank refine*k PQ candidates with the exact vectors
                    extra = {"refine": refine} if kind == "ivfpq" else {}
                    measure(kind, idx, build_s, idx.device, **{**kw, "nprobe": nprobe, **extra, "train": train})
        else:
            raise SystemExit(f"unknown index type {kind!r}")
        del idx


def parse_sizes(s: str) -> list[int]:
    return [int(float(v)) for v in s.split(",") if v]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", default="train,index", help="parts to run: train, index")
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes("1e5"), help="bank sizes, e.g. 1e6,1e7")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device (training, exact search)")
    p.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: all cores)")
    p.add_argument("--out", default=None, help="JSON file (rows accumulate across runs)")
    p.add_argument("--workdir", default=None, help="where random training banks are kept (default: temp dir)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("train")
    g.add_argument("--modes", type=lambda s: s.split(","), default=["none", "sync", "async"])
    g.add_argument("--backends", type=lambda s: s.split(","), default=["torch", "faiss"])
    g.add_argument("--steps", type=int, default=20, help="optimizer steps per cell")
    g.add_argument("--log-every", type=int, default=5)
    g.add_argument("--batch", type=int, default=None, help="training batch (default 64) / index query batch "
                                                            "(default 10000)")
    g.add_argument("--k", type=int, default=64, help="mining candidates")
    g.add_argument("--neg", type=int, default=8, help="mined negatives per sample")
    g.add_argument("--context", type=int, default=10)
    g.add_argument("--hidden", type=int, default=256)
    g.add_argument("--timeout", type=float, default=0.05, help="async wait before the in-batch fallback (s)")
    g = p.add_argument_group("index")
    g.add_argument("--types", type=lambda s: s.split(","), default=["torch", "flat", "ivf", "ivfpq"])
    g.add_argument("--nprobes", type=parse_sizes, default=[16, 64])
    g.add_argument("--nlist", type=int, default=None, help="default 4*sqrt(N)")
    g.add_argument("--pq-m", type=int, default=48)
    g.add_argument("--nbits", type=int, default=8)
    g.add_argument("--refine", type=int, default=4, help="also measure IVF-PQ with refine*k exact re-ranking")
    g.add_argument("--queries", type=int, default=10000)
    g.add_argument("--gt-queries", type=int, default=1000, help="queries with an exact ground truth (recall)")
    g.add_argument("--qps-budget", type=float, default=10.0, help="stop timing after this many seconds")
    g.add_argument("--data", default="random", choices=["random", "clustered"])
    args = p.parse_args()

    import torch

    from vecrag.runtime import set_threads

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU")
    threads = set_threads(args.threads, args.threads)
    try:
        import faiss

        fv = faiss.__version__
    except ImportError:
        fv = None
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="vecrag-scaling-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": platform.node(), "device": args.device,
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None, "cpu_cores": os.cpu_count(),
            "threads": threads, "torch": torch.__version__, "faiss": fv, "argv": sys.argv[1:]}
    say(f"scaling: {meta}")
    res = Results(args.out, meta)
    what = args.what.split(",")
    if "train" in what:
        args.batch, saved = args.batch or 64, args.batch
        run_train(args, res)
        args.batch = saved
    if "index" in what:
        args.batch = args.batch or 10000
        run_index(args, res)
    print_table(res.new)
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    tr = [r for r in rows if r["part"] == "train"]
    if tr:
        print("\n| N | mining | backend (search on) | samples/s | async hits / fallbacks | GPU MB | peak RSS MB |")
        print("|---|---|---|---|---|---|---|")
        for r in tr:
            print(f"| {r['n']:,} | {r['mining']} | {r['backend'] or '-'} ({r['search_on'] or '-'}) | "
                  f"{r['samples_per_s']:,.0f} | {r['async_hits']:.0f} / {r['async_fallbacks']:.0f} | "
                  f"{r['gpu_mem_mb'] or '-'} | {r['peak_rss_mb']:,.0f} |")
    ix = [r for r in rows if r["part"] == "index"]
    if ix:
        print("\n| N | index | params | search on | build s | queries/s | Recall@10 | GPU MB | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in ix:
            par = ", ".join(f"{k}={v}" for k, v in r["params"].items())
            print(f"| {r['n']:,} | {r['index']} | {par} | {r['search_on']} | {r['build_s']:.1f} | "
                  f"{r['queries_per_s']:,.0f} | {r['recall_at_10']:.3f} | {r['gpu_mem_mb'] or '-'} | "
                  f"{r['peak_rss_mb']:,.0f} |")


if __name__ == "__main__":
    sys.exit(main())
