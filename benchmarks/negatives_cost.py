"""What the async gap is made of: training samples/s with mined-shaped negatives that cost no mining (not a test).

``static`` feeds every step ``--neg`` negatives per sample from a table drawn once (random ids, -1 never), in
the same [batch, n_neg] form the miners hand over, so the step pays everything a mined batch costs the trainer
(row gathers, the padding mask, the larger InfoNCE) and nothing of the mining itself. Side by side with ``none`` and the
async miner (thread and process) in one run::

    python benchmarks/negatives_cost.py --size 1000000 --device cuda --steps 400 --batch 256 --repeats 3

``static`` / ``none`` is the cost of using negatives; ``async`` / ``static`` the cost of the miner running beside
the trainer (GPU sharing, GIL, hand-over). ``load`` separates the GPU sharing: static negatives while a thread
runs the miner's search kernels alone (exact top-``k`` of ``4 x batch`` random queries over the bank, on its own
stream, ``--load-sleep`` seconds apart: its jobs/s is printed to compare with the async miner's). ``wait ms`` is
the trainer's mean wait for the async miner a step. ``gil`` separates the host side: static negatives while a thread
runs bursts of small CPU torch ops and Python (``--gil-busy`` seconds each, ``--load-sleep`` apart), the miner's
share of the GIL without its GPU work.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from pathlib import Path

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_retriever import measure, random_bank  # noqa: E402

from vecrag.train.retriever_task import RetrieverTask  # noqa: E402


def search_load(bank, device: str, queries: int, k: int, sleep_s: float, stop: threading.Event,
                done: list[int]) -> None:
    """The async miner's search kernels without the miner: exact top-k of random queries, then a sleep."""
    import torch

    from vecrag.index.load import open_index

    index = open_index(bank, "torch", device)
    stream = torch.cuda.Stream() if device == "cuda" else None
    q = torch.nn.functional.normalize(torch.randn(queries, bank.dim, device=device), dim=1)
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        while not stop.is_set():
            index.search_tensor(q, k)[1].cpu()
            done[0] += 1
            time.sleep(sleep_s)


def gil_load(busy_s: float, sleep_s: float, stop: threading.Event, done: list[int]) -> None:
    """The miner's host side without the GPU: bursts of ``busy_s`` seconds of small CPU torch ops (each releases
    and retakes the GIL, as the miner's ~250 ops a job do) and Python, ``sleep_s`` apart."""
    import torch

    x = torch.zeros(16)
    while not stop.is_set():
        t_end = time.perf_counter() + busy_s
        while time.perf_counter() < t_end:
            x = (x + 1).mul_(0.5)
            sum(range(20))
        done[0] += 1
        time.sleep(sleep_s)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--modes", default="none,static,sync,async,async-proc",
                   help="as benchmarks/train_retriever.py (async-j1: one micro-batch a mining job; -nog / -gon: "
                        "CUDA graphs off / on; -noreuse: CPU sync mining runs the tower again), plus static "
                        "load (static + the miner's search kernels in a thread) and gil (static + a thread of "
                        "CPU torch ops and Python in bursts: the miner's host side without its GPU work)")
    p.add_argument("--gil-busy", type=float, default=0.008, help="gil mode: seconds of each burst (a 4-batch job "
                   "took 7-8 ms on an H200)")
    p.add_argument("--load-sleep", type=float, default=0.03, help="load mode: seconds between two searches")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--neg", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds of all modes; the table shows medians")
    p.add_argument("--workdir", default=None)
    p.add_argument("--tower", default="gru", choices=["gru", "transformer"],
                   help="query tower: gru (hidden 256) or transformer (retriever-gpu's: 2 layers, 4 heads, hidden 512)")
    p.add_argument("--miner-threads", type=int, default=0,
                   help="torch threads of the async-proc miner's child (0: its default, 2 on a GPU)")
    args = p.parse_args()
    if args.miner_threads:
        import dataclasses

        from vecrag.train.mining import process as miner_process

        spec_for = miner_process.spec_for
        miner_process.spec_for = lambda task: dataclasses.replace(spec_for(task), threads=args.miner_threads)
    # the fields train_retriever.measure reads
    args.accum, args.context, args.k, args.backend = 1, 10, 64, "torch"
    args.hidden = 512 if args.tower == "transformer" else 256
    args.timeout, args.log_every, args.profile_out = 0.05, 20 if args.steps >= 200 else 5, None
    from vecrag.runtime import set_threads

    threads = set_threads()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vecrag-negcost-"))
    bank = random_bank(work / f"bank-{args.size}", args.size, 384)
    table = np.random.default_rng(0).integers(0, bank.n, (bank.n, args.neg))  # by sample id (< bank.n)
    orig = RetrieverTask._mined
    modes = args.modes.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.repeats):  # interleaved: a drift of the machine hits every mode alike
        for mode in modes:
            if mode in ("static", "load", "gil"):
                RetrieverTask._mined = lambda self, idx, step, queries=None: table[np.asarray(idx)]  # noqa: E731
                stop, done, th = threading.Event(), [0], None
                load = {"load": (search_load, (bank, args.device, 4 * args.batch, args.k + 10)),  # search kernels
                        "gil": (gil_load, (args.gil_busy,))}.get(mode)                          # host side only
                if load is not None:  # beside the trainer, as the async miner runs them
                    th = threading.Thread(target=load[0], args=(*load[1], args.load_sleep, stop, done), daemon=True)
                    th.start()
                t0 = time.monotonic()
                r = measure(bank, work / f"run-{mode}-{np.random.randint(1 << 30)}", "sync", args)
                r["load_jobs_s"] = done[0] / (time.monotonic() - t0) if th is not None else float("nan")
                stop.set()
                RetrieverTask._mined = orig
                if th is not None:
                    th.join(60)
            else:
                r = measure(bank, work / f"run-{mode}-{np.random.randint(1 << 30)}", mode, args)
            runs[mode].append(r)
            print(f"  round {rep + 1}/{args.repeats} {mode}: {r['samples_per_s']:.0f} samples/s", file=sys.stderr)
    med = {m: float(np.median([r["samples_per_s"] for r in rs])) for m, rs in runs.items()}
    base = med.get("none", float("nan"))
    print(f"\nnegatives cost: device {args.device}, threads {threads}, bank {bank.n}, batch {args.batch}, "
          f"{args.neg} negatives, {args.tower} hidden {args.hidden}, context 10, {args.steps} steps, "
          f"median of {args.repeats} interleaved rounds (range: min-max)")
    print(f"{'mode':>12} {'samples/s':>10} {'range':>13} {'vs none':>8} {'hits':>6} {'fallbacks':>9} {'miner ms':>8} "
          f"{'wait ms':>7} {'load jobs/s':>11} {'graph jobs':>10}")
    for mode, rs in runs.items():
        sps = [r["samples_per_s"] for r in rs]
        last = rs[-1]
        print(f"{mode:>12} {med[mode]:>10.0f} {min(sps):>6.0f}-{max(sps):<6.0f} {100 * med[mode] / base:>7.0f}% "
              f"{last['hits']:>6.0f} {last['fallbacks']:>9.0f} {last['job_ms']:>8.1f} "
              f"{last.get('wait_ms', float('nan')) / args.steps:>7.2f} {last.get('load_jobs_s', float('nan')):>11.1f} "
              f"{last.get('graph_jobs', float('nan')):>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
