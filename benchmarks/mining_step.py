"""Cost of one hard-negative mining step outside the search (not a test; prints a table).

``MiningCore.mine`` for a batch of queries against a bank of random unit vectors: the tower forward, the
context gather, candidate scoring (cos to the query and to the positive), masks and negative selection. The
search itself is replaced by random candidate ids (on a GPU it is under a millisecond at 1M x 384 fp16), so
the table isolates the post-processing that made sync mining slow on the H200 (docs/bugs-and-fixes.md,
"Mining on CUDA"). Rows: bank rows read from the memory map on the host (the CPU default), rows gathered from
the resident copy (``ExactTorchIndex.gather``; the GPU default, forced here on ``--device``), and the resident
path with the real exact search (``+ search``).
A second table times what the TRAINING step then does with the result in every mining mode (async cannot
hide it): gathering the mined negatives' vectors (batch x 8) and the memory-bank queue (4,096 ids) from the
memory-mapped bank as fp32, as ``RetrieverTask._vecs`` does.

    .venv/bin/python benchmarks/mining_step.py --size 1000000 --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vecrag.bank.sequences import make_samples  # noqa: E402
from vecrag.bank.store import Bank  # noqa: E402
from vecrag.index.search import ExactTorchIndex  # noqa: E402
from vecrag.models.towers import QueryTower, TowerConfig  # noqa: E402
from vecrag.train.losses import ChunkMeta, NegativeMasker  # noqa: E402
from vecrag.train.mining.curriculum import FilterConfig, Phase  # noqa: E402
from vecrag.train.mining.miners import MiningCore  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_retriever import random_bank  # noqa: E402


class RandomCandidates(ExactTorchIndex):
    """The resident bank of ExactTorchIndex (for ``gather``) with the search replaced by random ids."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.random.default_rng(len(queries)).integers(0, self.ntotal, (len(queries), k))
        return np.zeros(ids.shape, np.float32), ids

    def search_tensor(self, qt: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, ids = self.search(np.zeros((len(qt), 1), np.float32), k)
        return torch.zeros(ids.shape, device=self.device), torch.from_numpy(ids).to(self.device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1_000_000, help="bank vectors")
    ap.add_argument("--batch", type=int, default=256, help="queries mined per step")
    ap.add_argument("--k", type=int, default=64, help="candidates per query (plus the context length)")
    ap.add_argument("--context", type=int, default=10)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--device", default="cpu", help="device of the tower and of the resident bank copy")
    ap.add_argument("--profile", action="store_true",
                    help="also print torch.profiler's ops by self CPU time over --reps resident steps (random "
                         "candidates): which part of the step outside the search costs what")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        random_bank(Path(d) / "bank", args.size, 384)
        bank = Bank.open(Path(d) / "bank")
        samples = make_samples(bank, "train", min_context=1)
        masker = NegativeMasker(ChunkMeta.from_bank(bank), window=2)
        search = RandomCandidates(bank.vectors, device=args.device)
        exact = ExactTorchIndex(bank.vectors, device=args.device)
        tower = QueryTower(bank.dim, TowerConfig(hidden=256)).to(args.device)
        phase = Phase(0, 0, 8, -1.0, 1.0)
        rng = np.random.default_rng(0)
        print(f"bank {args.size:,} x 384, batch {args.batch}, k {args.k} + {args.context}, device {args.device}, "
              f"torch threads {torch.get_num_threads()}")
        print(f"{'path':>10} {'ms per step (median)':>21} {'min':>8}")
        for name, resident, searcher in (("host rows", False, search), ("resident", True, search),
                                         ("+ search", True, exact)):
            core = MiningCore(bank.vectors, samples, args.context, masker, FilterConfig(), args.k, searcher,
                              args.device)
            core.use_resident = resident
            times = []
            for _ in range(args.reps + 1):
                idx = rng.choice(len(samples), args.batch, replace=False)
                t0 = time.perf_counter()
                core.mine(tower, idx, phase)
                times.append(1000 * (time.perf_counter() - t0))
            times = times[1:]  # the first call warms caches
            print(f"{name:>10} {statistics.median(times):21.1f} {min(times):8.1f}")
            if args.profile and name == "resident":
                profiled = (core, [rng.choice(len(samples), args.batch, replace=False) for _ in range(args.reps)])
        if args.profile:
            from torch.profiler import profile

            core, batches = profiled
            with profile() as prof:
                for idx in batches:
                    core.mine(tower, idx, phase)
            print(f"\nresident path, {args.reps} steps under torch.profiler:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        print(f"\n{'gather in the training step':>34} {'ms (median)':>12}")
        for name, rows in ((f"mined negatives ({args.batch} x 8)", args.batch * 8), ("queue (4,096)", 4096)):
            times = []
            for _ in range(args.reps + 1):
                ids = rng.integers(0, args.size, rows)
                t0 = time.perf_counter()
                np.asarray(bank.vectors[ids], np.float32)
                times.append(1000 * (time.perf_counter() - t0))
            print(f"{name:>34} {statistics.median(times[1:]):12.2f}")
        # the miner's row gather from the resident copy (ExactTorchIndex.gather): its candidates and positives
        rows = args.batch * (args.k + args.context + 1)
        whole = exact._whole
        print(f"\n{f'resident row gather ({rows:,} rows)':>34} {'ms (median)':>12}")
        for name, fn in (("advanced indexing (bank[ids])", lambda i: whole[i]),
                         ("index_select (what gather uses)", lambda i: whole.index_select(0, i))):
            times = []
            for _ in range(args.reps + 1):
                ids_t = torch.from_numpy(rng.integers(0, args.size, rows)).to(whole.device)
                if whole.is_cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn(ids_t)
                if whole.is_cuda:
                    torch.cuda.synchronize()
                times.append(1000 * (time.perf_counter() - t0))
            print(f"{name:>34} {statistics.median(times[1:]):12.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
