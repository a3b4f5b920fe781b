"""Why the miner child's negatives can differ from the trainer's on a GPU (session 12): one job mined three ways
(the trainer's core with graphs, the trainer's core eager, the child process) and a fresh tower loaded with the
same weights in this process; prints which rows differ and how far the queries are apart."""
import tempfile
from pathlib import Path

import numpy as np
import torch

from tests.conftest import make_synthetic_bank
from vecrag.config import from_dict
from vecrag.models.towers import QueryTower, TowerConfig
from vecrag.train.loop import Trainer
from vecrag.train.miner_process import ProcessCore, spec_for
from vecrag.train.retriever_task import RetrieverConfig, RetrieverTask

tmp = Path(tempfile.mkdtemp())
bank = make_synthetic_bank(tmp / "bank", n_articles=120, per_article=12)  # as tests/test_miners.py
cfg = from_dict(RetrieverConfig, {"train": {"context": 4, "device": "cuda", "batch_size": 16},
                                  "model": {"hidden": 16, "kind": "transformer", "layers": 2},
                                  "mining": {"mode": "sync", "k": 32, "per_job": 2,
                                             "schedule": "0:none;1-2:4@0.0-0.99"}})
task = RetrieverTask(bank, cfg)
Trainer(task, cfg.train, tmp / "run", run_config=cfg, quiet=True)
phase = task.curriculum.phase_for(1)
idx = np.arange(100, 132)
g = task._core().mine(task.model.query, idx, phase, 3)
core_e = task._core()
core_e.graphs = None
e = core_e.mine(task.model.query, idx, phase, 3)
fresh = QueryTower(bank.dim, TowerConfig(**{**cfg.model.__dict__})).cuda().eval()
fresh.load_state_dict(task.model.query.state_dict())
ctx = torch.randn(32, 4, bank.dim, device="cuda")
m = torch.ones(32, 4, dtype=torch.bool, device="cuda")
with torch.no_grad():
    task.model.query.eval()
    qa, qb = task.model.query(ctx, m), fresh(ctx, m)
print("same process, same weights, two towers: max |q diff|", (qa - qb).abs().max().item())
proc = ProcessCore(spec_for(task), stall=60)
try:
    c = proc.mine(task.model.query.cpu(), idx, phase, 3)
finally:
    proc.close()
for name, a, b in (("graph vs eager (trainer)", g, e), ("child vs trainer graph", c, g),
                   ("child vs trainer eager", c, e)):
    rows = np.flatnonzero((a.neg != b.neg).any(1))
    print(f"{name}: rows differing {len(rows)} of {len(idx)} {rows.tolist()}; "
          f"neg_n {a.stats.neg_n} vs {b.stats.neg_n}")
