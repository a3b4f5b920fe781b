"""Weight averaging of the last epochs (``train.swa_last``), kept when it validates better.

Rank 0 averages the model weights of the last ``swa_last`` pre-validation epoch checkpoints (float weights in
float64, integer buffers from the newest), validates the average, writes ``swa.pt`` and, when it beats the best
score, ``best.pt``; the live model keeps its trained weights (``last.pt``). A run that wrote ``swa.pt`` does not
average again on resume.
"""

from __future__ import annotations

from typing import Any

import torch

from vecrag.runs.layout import BEST, CHECKPOINTS


def average_last_epochs(t: Any) -> None:
    """Average the weights of the last ``swa_last`` epoch checkpoints of trainer ``t``; keep them if they validate
    better (see the module docstring)."""
    k = t.cfg.swa_last
    if not t.is_main:  # rank 0 alone reads its checkpoints, validates and writes swa.pt / best.pt
        return
    files = t.ckpts.preval_files()[-k:] if k else []
    if len(files) < 2 or (t.run_dir / CHECKPOINTS / "swa.pt").exists():
        return
    states = [t.ckpts.load(f)["model"] for f in files]
    live = t.task.model.state_dict()
    avg = {n: (sum(s[n].double() for s in states) / len(states)).to(live[n].dtype)
           if live[n].is_floating_point() else states[-1][n] for n in live}
    keep = {n: v.detach().clone() for n, v in live.items()}
    t.task.model.load_state_dict(avg)
    t.task.model.eval()
    with torch.no_grad():
        metrics = {k2: float(v) for k2, v in t.task.validate(t.epoch).items()}
    t.task.model.train()
    score = metrics[t.cfg.early_stop_metric]
    better = score > t.best if t.cfg.early_stop_mode == "max" else score < t.best
    t.log_record("val", epoch=t.epoch, step=t.step, swa=len(files), **metrics, improved=better)
    state = t.state_dict()
    state["swa_of"] = files
    if better:
        t.best, t.best_epoch = score, t.epoch
        t.ckpts.save(BEST, state)
    t.ckpts.save("swa.pt", state)
    t.task.model.load_state_dict(keep)  # last.pt keeps the trained weights
