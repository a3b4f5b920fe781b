"""Evaluators: objects that score a predictor (or its queries) on held-out samples of a bank with the shared hit
rules. Training validation and the ``vecrag eval ...`` commands call the same objects.

Every evaluator is called with what it scores and returns a dict of metrics that includes its ``primary``
metric (the one early stopping and model selection read):

- :class:`NextVectorEvaluator` (``primary = "cos"``): a :class:`vecrag.scoring.predictors.Predictor`'s
  next-chunk prediction: cosine to the true next vector (mean, 95 % CI, median), in-bank Recall@K / MRR@10 with
  the prediction as the query (exact search over the full bank, context ids excluded, same text = hit),
  contrastive accuracy in shuffled batches, the copy score, per-context-length buckets, and a rollout.
- :class:`RetrievalEvaluator` (``primary = "R@10"``): query vectors for the samples -> Recall@K with Wilson CIs,
  MRR@10 and the median rank.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from vecrag.bank.sequences import Samples
from vecrag.bank.store import Bank
from vecrag.scoring.metrics import DEFAULT_KS, recall_table
from vecrag.scoring.ranks import retrieve_ranks

BUCKETS = ((1, 1, "1"), (2, 4, "2-4"), (5, 9, "5-9"), (10, 10**9, "10+"))


class Evaluator(Protocol):
    """Scores one thing on a fixed set of samples; the returned dict holds ``primary``."""

    primary: str

    def __call__(self, scored: Any) -> dict[str, Any]: ...


def vector_groups(vectors: np.ndarray) -> np.ndarray:
    """Group id per row; rows with byte-identical vectors share a group (int64, length N)."""
    v = np.ascontiguousarray(np.asarray(vectors))
    rows = v.view(np.dtype((np.void, v.dtype.itemsize * v.shape[1]))).ravel()
    _, inverse = np.unique(rows, return_inverse=True)
    return inverse.astype(np.int64).ravel()


class RetrievalEvaluator:
    """Recall@K of query vectors [n, D] for ``samples`` against ``index`` (any object with
    ``search(queries, k)``), hit rules of :func:`vecrag.scoring.ranks.retrieve_ranks`."""

    primary = "R@10"

    def __init__(self, bank: Bank, samples: Samples, L: int, index: Any, *, ks: tuple[int, ...] = DEFAULT_KS):
        self.bank, self.samples, self.L, self.index = bank, samples, L, index
        self.ks = tuple(sorted({int(k) for k in ks}))

    def ranks(self, queries: np.ndarray, *, on_ids: Any = None) -> np.ndarray:
        return retrieve_ranks(self.index, queries, self.samples, self.L, min(self.ks[-1], self.bank.n),
                              bank=self.bank, on_ids=on_ids)

    def __call__(self, queries: np.ndarray, *, on_ids: Any = None) -> dict[str, Any]:
        return recall_table(self.ranks(queries, on_ids=on_ids), self.ks)


class NextVectorEvaluator:
    """Scores next-vector predictors on one set of samples with the bank on ``device`` (``bank_t``: the bank as a
    float32 tensor already there, and ``index`` an exact search over it, to share instead of copying).
    ``full=False`` skips the contrastive accuracy, the copy score and the buckets (training validation)."""

    primary = "cos"

    def __init__(self, bank: Bank, samples: Samples, L: int, *, device: Any = "cpu", batch: int = 1024,
                 contrast_batch: int = 256, ks: tuple[int, ...] = DEFAULT_KS, seed: int = 0, full: bool = True,
                 bank_t: Any = None, index: Any = None, groups: np.ndarray | None = None):
        import torch

        from vecrag.index.search import ExactTorchIndex

        self.bank, self.samples, self.L, self.batch, self.full = bank, samples, L, batch, full
        self.device = torch.device(device)
        if bank_t is None:
            bank_t = torch.from_numpy(np.array(bank.vectors, dtype=np.float32)).to(self.device)
        self.bank_t = bank_t
        self.index = index if index is not None else ExactTorchIndex(bank.vectors, device=str(self.device))
        self.ks, self.contrast_batch, self.seed = tuple(ks), contrast_batch, seed
        self.groups = groups if groups is not None else (vector_groups(bank.vectors) if full else None)

    def context(self, ids: np.ndarray) -> tuple[Any, Any]:
        import torch

        t = torch.from_numpy(ids).to(self.device)
        mask = t >= 0
        return self.bank_t[t.clamp(min=0)] * mask[:, :, None].float(), mask

    def predict(self, fn: Any) -> tuple[Any, Any]:
        """Predictions [n, D] and copy scores [n] for every sample."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            return self._predict(fn, torch, F)

    def _predict(self, fn: Any, torch: Any, F: Any) -> tuple[Any, Any]:
        preds, copy = [], []
        for s in range(0, len(self.samples), self.batch):
            ctx, mask = self.context(self.samples.context_ids(self.L, slice(s, s + self.batch)))
            p = F.normalize(fn(ctx, mask).float(), dim=-1)
            preds.append(p)
            c = torch.einsum("nd,nld->nl", p, ctx).masked_fill(~mask, -2.0)
            copy.append(c.max(1).values)
        if not preds:
            return torch.zeros(0, self.bank.dim, device=self.device), torch.zeros(0, device=self.device)
        return torch.cat(preds), torch.cat(copy)

    def contrastive_accuracy(self, pred: Any) -> float:
        import torch

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

    def __call__(self, fn: Any) -> dict[str, Any]:
        return self.score(fn)

    def score(self, fn: Any) -> dict[str, Any]:
        import torch

        pred, copy = self.predict(fn)
        tgt = self.bank_t[torch.from_numpy(self.samples.target).to(self.device)]
        cos = (pred * tgt).sum(-1).cpu().numpy().astype(np.float64)
        n = len(cos)
        ranks = retrieve_ranks(self.index, pred.cpu().numpy(), self.samples, self.L, max(self.ks), bank=self.bank)
        half = 1.96 * float(cos.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
        out: dict[str, Any] = {"cos": float(cos.mean()), "cos_ci": (float(cos.mean()) - half, float(cos.mean()) + half),
                               "cos_median": float(np.median(cos)), **recall_table(ranks, self.ks)}
        if not self.full:
            return out
        out.update({"contrast_acc": self.contrastive_accuracy(pred), "copy": float(copy.mean())})
        lengths = self.samples.context_lengths(self.L)
        out["buckets"] = {}
        for lo, hi, name in BUCKETS:
            sel = (lengths >= lo) & (lengths <= hi)
            if sel.any():
                r = ranks[sel]
                out["buckets"][name] = {"n": int(sel.sum()), "cos": float(cos[sel].mean()),
                                        "R@10": float(np.mean((r >= 0) & (r < 10)))}
        return out

    def rollout(self, fn: Any, horizon: int) -> dict[str, Any]:
        """Cosine to the true chunk at each of ``horizon`` steps, feeding predictions back into the context."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            return self._rollout(fn, horizon, torch, F)

    def _rollout(self, fn: Any, horizon: int, torch: Any, F: Any) -> dict[str, Any]:
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
