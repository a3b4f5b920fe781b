"""Honest LVM evaluation: the trained model next to copy-last, mean, ewma and a ridge predictor, same queries.

Every predictor maps a right-aligned context (``ctx`` float [n, L, D], ``mask`` bool [n, L]) to unit vectors
[n, D]. For each one, on the held-out split:
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
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vecrag.bank.sequences import Samples, make_samples
from vecrag.bank.store import Bank
from vecrag.errors import VecragError
from vecrag.scoring.heuristics import heuristic_query_torch
from vecrag.scoring.metrics import recall_table

log = logging.getLogger(__name__)
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EVAL_KS = (1, 5, 10, 100, 500)
BUCKETS = ((1, 1, "1"), (2, 4, "2-4"), (5, 9, "5-9"), (10, 10**9, "10+"))


# ---- predictors ---------------------------------------------------------------------------------------
def heuristic(kind: str, alpha: float = 0.5) -> Predictor:
    def fn(ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return heuristic_query_torch(ctx, mask, kind, alpha)
    return fn


def ridge_solve(xtx: np.ndarray, xty: np.ndarray, lam: float) -> np.ndarray:
    """W = (X'X + lam I)^-1 X'Y, the last row (bias) unpenalised."""
    reg = np.eye(xtx.shape[0]) * lam
    reg[-1, -1] = 0.0
    return np.linalg.solve(xtx + reg, xty)


RIDGE_LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)


class RidgePredictor:
    """normalize([flatten(ctx), 1] @ W)."""

    def __init__(self, w: np.ndarray, device: torch.device | str = "cpu", lam: float | None = None):
        self.w = torch.from_numpy(w.astype(np.float32)).to(device)
        self.lam = lam

    def __call__(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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


# ---- evaluation ---------------------------------------------------------------------------------------
class Evaluator:
    """Scores predictors on one set of samples with the bank on ``device``."""

    def __init__(self, bank: Bank, samples: Samples, L: int, *, device: str | torch.device = "cpu",
                 batch: int = 1024, contrast_batch: int = 256, ks: tuple[int, ...] = EVAL_KS, seed: int = 0):
        from vecrag.index.search import ExactTorchIndex

        self.bank, self.samples, self.L, self.batch = bank, samples, L, batch
        self.device = torch.device(device)
        self.bank_t = torch.from_numpy(np.array(bank.vectors, dtype=np.float32)).to(self.device)
        self.index = ExactTorchIndex(bank.vectors, device=str(self.device))
        self.ks, self.contrast_batch, self.seed = ks, contrast_batch, seed
        from vecrag.train.lvm_task import vector_groups

        self.groups = vector_groups(bank.vectors)

    def context(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.from_numpy(ids).to(self.device)
        mask = t >= 0
        return self.bank_t[t.clamp(min=0)] * mask[:, :, None].float(), mask

    @torch.no_grad()
    def predict(self, fn: Predictor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions [n, D] and copy scores [n] for every sample."""
        preds, copy = [], []
        for s in range(0, len(self.samples), self.batch):
            ctx, mask = self.context(self.samples.context_ids(self.L, slice(s, s + self.batch)))
            p = F.normalize(fn(ctx, mask).float(), dim=-1)
            preds.append(p)
            c = torch.einsum("nd,nld->nl", p, ctx).masked_fill(~mask, -2.0)
            copy.append(c.max(1).values)
        return torch.cat(preds), torch.cat(copy)

    def contrastive_accuracy(self, pred: torch.Tensor) -> float:
        n = pred.shape[0]
        order = np.random.default_rng(self.seed).permutation(n)
        tg = self.samples.target
        correct = 0
        for s in range(0, n, self.contrast_batch):
            b = order[s:s + self.contrast_batch]
            t = self.bank_t[torch.from_numpy(tg[b]).to(self.device)]
            scores = pred[torch.from_numpy(b).to(self.device)] @ t.T
            # hit rules as for retrieval: a sample's own context chunks are not candidates
            ctx = self.samples.context_ids(self.L, b)
            in_ctx = (tg[b][None, :, None] == ctx[:, None, :]).any(-1)
            scores = scores.masked_fill(torch.from_numpy(in_ctx).to(self.device), float("-inf"))
            best = scores.argmax(1).cpu().numpy()
            g = self.groups[tg[b]]
            correct += int((g[best] == g).sum())
        return correct / max(n, 1)

    def score(self, fn: Predictor) -> dict[str, Any]:
        from vecrag.scoring.ranks import retrieve_ranks

        pred, copy = self.predict(fn)
        tgt = self.bank_t[torch.from_numpy(self.samples.target).to(self.device)]
        cos = (pred * tgt).sum(-1).cpu().numpy().astype(np.float64)
        n = len(cos)
        ranks = retrieve_ranks(self.index, pred.cpu().numpy(), self.samples, self.L, max(self.ks), bank=self.bank)
        half = 1.96 * float(cos.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
        out: dict[str, Any] = {"cos": float(cos.mean()), "cos_ci": (float(cos.mean()) - half, float(cos.mean()) + half),
                               "cos_median": float(np.median(cos)), **recall_table(ranks, self.ks),
                               "contrast_acc": self.contrastive_accuracy(pred), "copy": float(copy.mean())}
        lengths = self.samples.context_lengths(self.L)
        out["buckets"] = {}
        for lo, hi, name in BUCKETS:
            sel = (lengths >= lo) & (lengths <= hi)
            if sel.any():
                r = ranks[sel]
                out["buckets"][name] = {"n": int(sel.sum()), "cos": float(cos[sel].mean()),
                                        "R@10": float(np.mean((r >= 0) & (r < 10)))}
        return out

    @torch.no_grad()
    def rollout(self, fn: Predictor, horizon: int) -> dict[str, Any]:
        """Cosine to the true chunk at each of ``horizon`` steps, feeding predictions back into the context."""
        tg = self.samples.target
        last = tg + horizon - 1
        art = self.bank.article_of
        ok = (last < self.bank.n) & (art[np.minimum(last, self.bank.n - 1)] == art[tg])
        sub = np.flatnonzero(ok)
        sums = np.zeros(horizon)
        for s in range(0, len(sub), self.batch):
            b = sub[s:s + self.batch]
            ctx, mask = self.context(self.samples.context_ids(self.L, b))
            for h in range(horizon):
                p = F.normalize(fn(ctx, mask).float(), dim=-1)
                truth = self.bank_t[torch.from_numpy(tg[b] + h).to(self.device)]
                sums[h] += float((p * truth).sum())
                ctx = torch.cat([ctx[:, 1:], p[:, None]], dim=1)
                mask = torch.cat([mask[:, 1:], torch.ones_like(mask[:, :1])], dim=1)
        return {"n": int(len(sub)), "cos": (sums / max(len(sub), 1)).tolist()}


def evaluate(bank: Bank, samples: Samples, L: int, predictors: dict[str, Predictor], *, horizon: int = 0,
             device: str | torch.device = "cpu", contrast_batch: int = 256) -> dict[str, Any]:
    ev = Evaluator(bank, samples, L, device=device, contrast_batch=contrast_batch)
    rows = {name: ev.score(fn) for name, fn in predictors.items()}
    out: dict[str, Any] = {"n_queries": len(samples), "context": L, "rows": rows,
                           "hit_rules": "context ids excluded; same text = hit; FULL bank, exact search"}
    if horizon > 0:
        out["rollout"] = {name: ev.rollout(fn, horizon) for name, fn in predictors.items()}
    return out


def default_predictors(model: Any, cfg: Any, ridge: RidgePredictor | None) -> dict[str, Predictor]:
    alpha = cfg.model.alpha if cfg.model.anchor == "ewma" else 0.5
    preds: dict[str, Predictor] = {f"lvm-{cfg.model.kind}": model, "copy-last": heuristic("last"),
                                   "mean": heuristic("mean"), f"ewma-{alpha:g}": heuristic("ewma", alpha)}
    if ridge is not None:
        preds["ridge"] = ridge
    return preds
