"""Why the miner child's negatives can differ from the trainer's on a GPU (session 12), and what the CUDA warm-up
test's perturbation does. One job of tests/test_miners.py's warm-up test mined several ways: the trainer's core with
and without CUDA graphs, the child process (with its warm-up job), each before and after the test's seeded 0.02
perturbation of the tower; prints which rows differ and the negatives found. On the CPU there are no graphs and no
warm-up unless asked: the child is given the test's warm-up job explicitly.

    PYTHONPATH=src:. python3 docs/results/h200-bench-12/scripts/proc_diff.py [cuda|cpu]
"""
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from tests.conftest import make_synthetic_bank
from vecrag.config import from_dict
from vecrag.train.loop import Trainer
from vecrag.train.miner_process import ProcessCore, spec_for
from vecrag.train.retriever_task import RetrieverConfig, RetrieverTask


def rows_differing(a, b) -> str:
    rows = np.flatnonzero((a.neg != b.neg).any(1))
    return f"rows differing {len(rows)} of {len(a.neg)} {rows.tolist()}; neg_n {a.stats.neg_n} vs {b.stats.neg_n}"


def main() -> None:
    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    tmp = Path(tempfile.mkdtemp())
    bank = make_synthetic_bank(tmp / "bank", n_articles=120, per_article=12)  # as tests/test_miners.py
    cfg = from_dict(RetrieverConfig, {"train": {"context": 4, "device": dev, "batch_size": 16},
                                      "model": {"hidden": 16, "kind": "transformer", "layers": 2},
                                      "mining": {"mode": "sync", "k": 32, "per_job": 2,
                                                 "schedule": "0:none;1-2:4@0.0-0.99"}})
    task = RetrieverTask(bank, cfg)
    Trainer(task, cfg.train, tmp / "run", run_config=cfg, quiet=True)
    phase = task.curriculum.phase_for(1)
    spec = spec_for(task)
    if spec.warmup is None:  # a CPU run: the job a child on a GPU warms up with
        spec = dataclasses.replace(spec, warmup=(32, phase))
    idx = np.arange(100, 132)
    eager = task._core()
    eager.graphs = None
    mined = {}
    for state in ("initial", "perturbed"):
        if state == "perturbed":  # the CUDA warm-up test's change of weights
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in task.model.query.parameters():
                    p.add_(0.02 * torch.randn(p.shape, generator=gen).to(p.device))
        tower = task.model.query.to(task.device)
        mined[state, "graph"] = task._core().mine(tower, idx, phase, 3)
        mined[state, "eager"] = eager.mine(tower, idx, phase, 3)
        proc = ProcessCore(spec, stall=60)
        try:
            mined[state, "child"] = proc.mine(tower.cpu(), idx, phase, 3)
        finally:
            proc.close()
        print(f"{state}: graph vs eager (trainer): {rows_differing(mined[state, 'graph'], mined[state, 'eager'])}")
        print(f"{state}: child vs trainer eager: {rows_differing(mined[state, 'child'], mined[state, 'eager'])}")
    print(f"perturbed vs initial weights (trainer eager): "
          f"{rows_differing(mined['perturbed', 'eager'], mined['initial', 'eager'])}")


if __name__ == "__main__":  # the miner child is spawned: it imports this file and must not run it
    main()
