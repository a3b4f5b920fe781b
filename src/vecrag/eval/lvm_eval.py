"""Honest LVM evaluation: the trained model next to copy-last, mean, ewma and a ridge predictor, same queries.

Scored by :class:`vecrag.scoring.evaluators.NextVectorEvaluator`, the object LVM validation uses. Every predictor
maps a right-aligned context (``ctx`` float [n, L, D], ``mask`` bool [n, L]) to unit vectors [n, D]. For each
one, on the held-out split:
- cosine to the true next vector: mean (95 % normal CI) and median;
- in-bank rank of the true next chunk with the prediction as the query, exact search over the FULL bank
  (``vecrag.index.search.ExactTorchIndex``), hit rules of ``vecrag.scoring.ranks.retrieve_ranks`` (context ids
  excluded, same text = hit): Recall@K with Wilson CIs, MRR@10, median rank;
- contrastive accuracy: within fixed-seed shuffled batches of ``contrast_batch`` samples, the share whose
  prediction scores its own target (or an exact duplicate of it) above every other in-batch target (targets
  that are chunks of the sample's own context are not candidates, as in the retrieval hit rules);
- copy score: the mean of the max cosine between the prediction and any of its context vectors (high for a
  model that echoes its context);
- the same cosine/Recall@10 per context-length bucket (1, 2-4, 5-9, 10+);
- optionally a ``horizon``-step rollout: predictions are appended to the context (window of L) and the cosine
  to the true chunk at each step is reported (samples whose article has ``horizon`` more chunks).
The ridge baseline is a closed-form linear least-squares map from the flattened, zero-padded context (plus a
bias) to the target, fitted on the TRAIN split (``fit_ridge``); its output is normalised. Its L2 penalty is
chosen on the VAL split from ``RIDGE_LAMBDAS`` unless fixed (a weakly regularised ridge overfits the
L*D+1 = 3,841 features of a 384-D bank at L=10 and would be a straw-man baseline).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vecrag.bank.sequences import Samples, make_samples
from vecrag.bank.store import Bank
from vecrag.errors import VecragError
from vecrag.scoring.evaluators import NextVectorEvaluator
from vecrag.scoring.predictors import HeuristicPredictor, Predictor, TorchPredictor

log = logging.getLogger(__name__)
EVAL_KS = (1, 5, 10, 100, 500)


# ---- predictors ---------------------------------------------------------------------------------------
def ridge_solve(xtx: np.ndarray, xty: np.ndarray, lam: float) -> np.ndarray:
    """W = (X'X + lam I)^-1 X'Y, the last row (bias) unpenalised."""
    reg = np.eye(xtx.shape[0]) * lam
    reg[-1, -1] = 0.0
    return np.linalg.solve(xtx + reg, xty)


RIDGE_LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


class RidgePredictor:
    """normalize([flatten(ctx), 1] @ W): a :class:`vecrag.scoring.predictors.Predictor` of ``context_len`` L."""

    name = "ridge"

    def __init__(self, w: np.ndarray, device: torch.device | str = "cpu", lam: float | None = None):
        self.w = torch.from_numpy(w.astype(np.float32)).to(device)
        self.lam = lam
        self.context_len = (w.shape[0] - 1) // max(1, w.shape[1])

    def __call__(self, ctx: Any, mask: Any) -> Any:
        if isinstance(ctx, np.ndarray):
            t = self(torch.from_numpy(np.asarray(ctx, np.float32)).to(self.w.device),
                     torch.from_numpy(np.asarray(mask, bool)).to(self.w.device))
            return t.cpu().numpy()
        x = (ctx * mask[:, :, None].to(ctx.dtype)).flatten(1)
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
        return F.normalize(x @ self.w, dim=-1)


def fit_ridge(bank: Bank, L: int, *, lam: float | Sequence[float] = 1.0, max_samples: int | None = 200_000,
              batch: int = 4096, device: torch.device | str = "cpu", val_max: int = 5000) -> RidgePredictor:
    """Closed-form ridge regression on the TRAIN split (sufficient statistics accumulated in float64).

    ``lam`` a sequence: each penalty is solved and the one with the best mean cosine on (up to ``val_max``
    samples of) the VAL split is kept (the middle one when the val split is empty); ``.lam`` records it."""
    samples = make_samples(bank, "train", min_context=1, max_samples=max_samples, seed=0)
    if len(samples) == 0:
        raise VecragError("cannot fit the ridge baseline: the train split is empty", path=bank.path)
    d = L * bank.dim + 1
    xtx, xty = np.zeros((d, d)), np.zeros((d, bank.dim))
    for s in range(0, len(samples), batch):
        sl = slice(s, s + batch)
        ids = samples.context_ids(L, sl)
        x = np.asarray(bank.vectors[np.where(ids >= 0, ids, 0)], dtype=np.float64) * (ids >= 0)[:, :, None]
        x = np.concatenate([x.reshape(len(ids), -1), np.ones((len(ids), 1))], axis=1)
        y = np.asarray(bank.vectors[samples.target[sl]], dtype=np.float64)
        xtx += x.T @ x
        xty += x.T @ y
    if isinstance(lam, (int, float)):
        return RidgePredictor(ridge_solve(xtx, xty, float(lam)), device, float(lam))
    lams = [float(x) for x in lam]
    val = make_samples(bank, "val", min_context=1, max_samples=val_max, seed=0)
    if len(val) == 0:
        mid = lams[len(lams) // 2]
        return RidgePredictor(ridge_solve(xtx, xty, mid), device, mid)
    vids = val.context_ids(L)
    x = np.asarray(bank.vectors[np.where(vids >= 0, vids, 0)], dtype=np.float32) * (vids >= 0)[:, :, None]
    x = np.concatenate([x.reshape(len(vids), -1), np.ones((len(vids), 1), np.float32)], axis=1)
    y = np.asarray(bank.vectors[val.target], dtype=np.float32)
    best: tuple[float, float, np.ndarray] | None = None
    for lm in lams:
        w = ridge_solve(xtx, xty, lm)
        pred = x @ w.astype(np.float32)
        pred /= np.maximum(np.linalg.norm(pred, axis=1, keepdims=True), 1e-12)
        cos = float(np.mean(np.sum(pred * y, axis=1)))
        if best is None or cos > best[0]:
            best = (cos, lm, w)
    assert best is not None
    return RidgePredictor(best[2], device, best[1])


def evaluate(bank: Bank, samples: Samples, L: int, predictors: dict[str, Predictor], *, horizon: int = 0,
             device: str | torch.device = "cpu", contrast_batch: int = 256) -> dict[str, Any]:
    ev = NextVectorEvaluator(bank, samples, L, device=device, contrast_batch=contrast_batch, ks=EVAL_KS)
    rows = {name: ev.score(fn) for name, fn in predictors.items()}
    out: dict[str, Any] = {"n_queries": len(samples), "context": L, "rows": rows,
                           "hit_rules": "context ids excluded; same text = hit; FULL bank, exact search"}
    if horizon > 0:
        out["rollout"] = {name: ev.rollout(fn, horizon) for name, fn in predictors.items()}
    return out


def default_predictors(model: Any, cfg: Any, ridge: RidgePredictor | None) -> dict[str, Predictor]:
    alpha = cfg.model.alpha if cfg.model.anchor == "ewma" else 0.5
    L = cfg.train.context
    device = next(iter(model.parameters())).device
    preds: dict[str, Predictor] = {f"lvm-{cfg.model.kind}": TorchPredictor(model, f"lvm-{cfg.model.kind}", L, device),
                                   "copy-last": HeuristicPredictor("last", context_len=L),
                                   "mean": HeuristicPredictor("mean", context_len=L),
                                   f"ewma-{alpha:g}": HeuristicPredictor("ewma", alpha, context_len=L)}
    if ridge is not None:
        preds["ridge"] = ridge
    return preds
