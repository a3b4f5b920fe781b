"""Retriever training throughput: samples/s with no mining, sync mining and async mining (not a test).

Banks of random unit vectors (throughput only; 20 chunks per article) at the sizes given, e.g.::

    python benchmarks/train_retriever.py --sizes 100000,1000000 --device cpu
    python benchmarks/train_retriever.py --sizes 100000 --batch 8 --accum 2      # the original design's CPU-test shape

Each cell runs the real Trainer + RetrieverTask for ``--steps`` optimizer steps and reports the median
``samples_per_s`` of the train records (the first record, warm-up, is dropped), plus the async miner's
hits / fallbacks. Mining searches the FULL bank (``--backend faiss``: exact IndexFlatIP; ``torch``: matmul
top-k) for ``--k`` candidates and keeps ``--neg`` negatives per sample.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
import time
from pathlib import Path

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402

from vecrag.bank.store import EncoderInfo, write_bank  # noqa: E402


def random_bank(path: Path, n: int, dim: int, per_article: int = 20, seed: int = 0):
    """Write (or reuse, when ``path`` already holds one of this shape) a bank of random unit vectors."""
    from vecrag.bank.store import Bank

    if (path / "manifest.json").is_file():
        bank = Bank.open(path)
        if bank.n == n and bank.dim == dim:
            return bank
    rng = np.random.default_rng(seed)
    vecs = np.empty((n, dim), np.float16)
    for s in range(0, n, 65536):
        v = rng.standard_normal((min(65536, n - s), dim)).astype(np.float32)
        vecs[s:s + len(v)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    arts = np.arange(n, dtype=np.int64) // per_article
    pos = (np.arange(n) % per_article).astype(np.int32)
    texts = [f"c{i}" for i in range(n)]
    titles = [f"a{a}" for a in range(int(arts[-1]) + 1)]
    return write_bank(path, vecs, article_ids=arts, positions=pos, texts=texts, titles=titles,
                      encoder=EncoderInfo("random", dim), dtype="float16")


# the query tower: retriever-default's GRU, or retriever-gpu's 2-layer causal transformer (4 heads)
TOWERS = {"gru": ["model.kind=gru", "model.layers=1"],
          "transformer": ["model.kind=transformer", "model.layers=2", "model.heads=4"]}


def measure(bank, run_dir: Path, mode: str, args) -> dict[str, float]:
    from vecrag.config import load_config
    from vecrag.train.loop import Trainer
    from vecrag.train.retriever_task import RetrieverConfig, RetrieverTask, resolve_config

    # mode: none | sync | async[-proc][-jN][-nog|-gon][-noreuse][-graph|-eager] (-proc: mining.worker=process; -jN:
    # mining.per_job=N; -nog / -gon: mining.cuda_graph=off / on (default auto); -noreuse: CPU sync mining runs the
    # tower again instead of reading the training step's queries, as before af03ed5; -graph / -eager: the training
    # step as a CUDA graph or not, train.cuda_graph=on / off, default auto). args.extra: more config overrides
    parts = mode.split("-")
    per_job = next((int(x[1:]) for x in parts[1:] if x[:1] == "j" and x[1:].isdigit()), None)
    over = [f"train.batch_size={args.batch}", f"train.grad_accum={args.accum}", f"train.max_steps={args.steps}",
            f"train.log_every={args.log_every}", f"train.device={args.device}", f"train.context={args.context}",
            "train.val_max_queries=20", "train.epochs=1", "train.tensorboard=false", "train.patience=0",
            f"mining.mode={parts[0]}", f"mining.worker={'process' if 'proc' in parts else 'thread'}",
            f"mining.schedule=0:{args.neg}@-1.0-1.0", f"mining.k={args.k}",
            f"mining.backend={args.backend}", "mining.fallback=inbatch", "mining.ttl=1000",
            f"mining.timeout={args.timeout}", "mining.refresh_every=10", "mining.lookahead=8",
            f"model.hidden={args.hidden}", "val_backend=torch", *TOWERS[getattr(args, "tower", "gru")]] \
        + ([f"mining.per_job={per_job}"] if per_job else []) \
        + (["mining.cuda_graph=off"] if "nog" in parts else ["mining.cuda_graph=on"] if "gon" in parts else []) \
        + ([f"loss.queue={args.queue}"] if getattr(args, "queue", None) is not None else []) \
        + (["train.cuda_graph=on"] if "graph" in parts else ["train.cuda_graph=off"] if "eager" in parts else []) \
        + list(getattr(args, "extra", None) or [])
    cfg = load_config(RetrieverConfig, "retriever-default", over)
    resolve_config(cfg, bank)
    import torch

    gc.collect()  # the previous cell's trainer <-> task cycle holds its bank copies (10M fp32 on a CPU: 15 GB)
    if args.device == "cuda":  # each cell's own peak (the trainer process; a miner process is not counted)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    task = RetrieverTask(bank, cfg)
    task.reuse_query = "noreuse" not in parts
    try:
        trainer = Trainer(task, cfg.train, run_dir, run_config=cfg, quiet=True)
        # the async miner starts with the trainer: time the steps, not its start-up
        if getattr(task.negatives, "async_miner", None) is not None:
            task.negatives.async_miner._ready.wait(300)
        if getattr(args, "profile_out", None):  # optional, as tower / queue: scaling.py's namespace has none
            run_profiled(trainer, args, Path(args.profile_out) / f"profile-{bank.n}-{mode}.txt")
        else:
            trainer.fit()
    finally:
        task.close()
    recs = train_records(run_dir)
    st = task.stats()
    return {"samples_per_s": median_rate(recs), "hits": st.get("miner_hits", 0.0),
            "job_ms": st.get("miner_job_ms", float("nan")), "wait_ms": st.get("miner_wait_ms", float("nan")),
            "fallbacks": st.get("miner_fallbacks", 0.0),
            "graph_jobs": st.get("miner_graph_jobs", st.get("mining_mined_sync_graph", float("nan"))),
            "rss_mb": recs[-1]["rss_mb"] if recs else float("nan"),
            "gpu_mb": max((r.get("cuda_mem_mb", 0.0) for r in recs), default=0.0)}


def train_records(run_dir: Path) -> list[dict]:
    from vecrag.fsutil import read_jsonl

    return [r for r in read_jsonl(run_dir / "log.jsonl") if r["kind"] == "train"]


def median_rate(recs: list[dict]) -> float:
    """Median samples/s of a run's train records, the first (capture, warm-up) left out when there are others."""
    return float(np.median([r["samples_per_s"] for r in recs[1:]] or [r["samples_per_s"] for r in recs]))


def run_profiled(trainer, args, out: Path) -> None:
    """``trainer.fit()`` under torch.profiler (every thread: the async miner's ops show up too); writes the
    ops by self CPU time and, on CUDA, by self CUDA time, so a slow mode can be attributed in one run.
    The profiler slows the run: use its table for shares, the unprofiled run for samples/s."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=acts) as prof:
        trainer.fit()
    ka = prof.key_averages()
    parts = [ka.table(sort_by="self_cpu_time_total", row_limit=25)]
    if args.device == "cuda":
        parts.append(ka.table(sort_by="self_cuda_time_total", row_limit=15))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(parts), encoding="utf-8")
    print(f"profile written to {out}", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="bank sizes (comma-separated)")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--modes", default="none,sync,async,async-proc",
                   help="none, sync, async (miner thread), async-proc (miner process: mining.worker=process); "
                        "a -jN suffix mines N micro-batches a job (mining.per_job; default 4), e.g. async-j1; -nog / "
                        "-gon: mining.cuda_graph=off / on; -noreuse: CPU sync mining runs the tower again")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--context", type=int, default=10)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--tower", default="gru", choices=sorted(TOWERS),
                   help="query tower: gru (retriever-default's) or transformer (retriever-gpu's: 2 layers, 4 heads)")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per cell")
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--neg", type=int, default=8)
    p.add_argument("--queue", type=int, default=None,
                   help="memory-bank queue size (default: the preset's, 256; retriever-gpu uses 4096)")
    p.add_argument("--backend", default="faiss", choices=["faiss", "torch"])
    p.add_argument("--index", default=None, choices=["ivf", "hnsw"],
                   help="build this FAISS index for each bank first; --backend faiss then mines through it "
                        "(approximate search: the async miner's cost on a CPU shared with the trainer)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: vecrag's choice)")
    p.add_argument("--timeout", type=float, default=0.05, help="async wait before falling back (s)")
    p.add_argument("--workdir", default=None, help="where to write the random banks (default: a temp dir)")
    p.add_argument("--profile-out", default=None, metavar="DIR",
                   help="run each cell under torch.profiler and write its op table to DIR (slower: for shares only)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from vecrag.runtime import set_threads

    threads = set_threads()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vecrag-bench-"))
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        t = time.perf_counter()
        bank = random_bank(work / f"bank-{n}", n, args.dim)
        print(f"bank {n} x {args.dim} written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        if args.index:
            from vecrag.index.build import build_index

            t = time.perf_counter()
            idx = build_index(bank, args.index, nprobe=args.nprobe, device="cpu", progress=False)
            print(f"index {idx.describe()} built in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        for mode in args.modes.split(","):
            r = measure(bank, work / f"run-{n}-{mode}-{time.time_ns()}", mode, args)
            rows.append((n, mode, r))
            print(f"  {n:>9} {mode:>6}: {r['samples_per_s']:.0f} samples/s", file=sys.stderr)
    base = {n: r["samples_per_s"] for n, m, r in rows if m == "none"}
    print(f"\nretriever training throughput: device {args.device}, threads {threads}, batch {args.batch} x accum "
          f"{args.accum}, context {args.context}, {args.tower} hidden {args.hidden}, dim {args.dim}, k {args.k}, "
          f"{args.neg} negatives, mining backend {args.backend}" + (f" ({args.index} index)" if args.index else ""))
    print(f"{'bank':>9} {'mining':>10} {'samples/s':>10} {'vs none':>8} {'async hits':>10} {'fallbacks':>9} "
          f"{'rss MB':>8} {'GPU MB':>8} {'miner ms':>8}")
    for n, mode, r in rows:
        rel = r["samples_per_s"] / base[n] if n in base else float("nan")
        print(f"{n:>9} {mode:>10} {r['samples_per_s']:>10.0f} {100 * rel:>7.0f}% {r['hits']:>10.0f} "
              f"{r['fallbacks']:>9.0f} {r['rss_mb']:>8.0f} {r['gpu_mb']:>8.0f} {r['job_ms']:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
