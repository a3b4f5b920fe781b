"""Context -> target samples, drawn inside one article only, for an article-level split.

A sample is its target chunk id ``t``; its context is the previous up-to-L chunk ids of the same article,
``max(article_start, t - L) .. t - 1``. Context matrices are right-aligned: column ``L - 1`` is always the
last context chunk; missing (short-context) slots on the left are ``-1`` and masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vecrag.bank.store import Bank
from vecrag.errors import VecragError


@dataclass(frozen=True)
class Samples:
    """Targets and the first chunk id of their article (both int64, same length)."""

    target: np.ndarray
    start: np.ndarray
    split: str = ""

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def subset(self, idx: np.ndarray | slice) -> Samples:
        return Samples(self.target[idx], self.start[idx], self.split)

    def context_lengths(self, L: int) -> np.ndarray:
        return np.minimum(self.target - self.start, L)

    def context_ids(self, L: int, idx: np.ndarray | slice | None = None) -> np.ndarray:
        """int64 [n, L] right-aligned context ids; -1 where the article has no earlier chunk."""
        t = self.target if idx is None else self.target[idx]
        s = self.start if idx is None else self.start[idx]
        return context_window(t, s, L)


def context_window(target, start, L: int):
    """int64 [n, L] right-aligned context ids of targets ``target`` [n] whose articles start at ``start`` [n]
    (-1 before the start): the L chunks before each target (an article's chunks have consecutive ids, in order).
    numpy arrays or torch tensors alike (a graphed training step builds them on the GPU)."""
    if isinstance(target, np.ndarray):
        back = np.arange(L, 0, -1, dtype=np.int64)
        ids = target[:, None] - back[None, :]
        return np.where(ids >= start[:, None], ids, -1)
    import torch

    ids = target[:, None] - torch.arange(L, 0, -1, dtype=torch.int64, device=target.device)[None, :]
    return torch.where(ids >= start[:, None], ids, -1)


def before_target(ids, start, target):
    """[n, K] True where a result id is a chunk of the sample's article before its target (the context and what
    precedes it: a continuation that never goes back cannot be one). ``ids`` [n, K], ``start`` and ``target``
    [n]; numpy arrays or torch tensors alike (an article's chunks have consecutive ids, in order)."""
    return (ids >= start[:, None]) & (ids < target[:, None])


def make_samples(bank: Bank, split: str, *, min_context: int = 1, max_samples: int | None = None,
                 seed: int = 0) -> Samples:
    """Every position ``t`` with at least ``min_context`` earlier chunks in its article, for one split.

    ``max_samples`` draws a deterministic subset (sorted by target id) for evaluation on big banks.
    """
    if min_context < 1:
        raise VecragError(f"min_context must be >= 1, got {min_context}")
    arts = set(bank.split_articles(split).tolist())
    t = bank.articles
    a_ids = t.column("article_id").to_numpy()
    first = t.column("first_chunk").to_numpy()
    count = t.column("n_chunks").to_numpy()
    keep = np.fromiter((a in arts for a in a_ids), dtype=bool, count=len(a_ids))
    targets, starts = [], []
    for f, c in zip(first[keep], count[keep], strict=True):
        if c > min_context:
            targets.append(np.arange(f + min_context, f + c, dtype=np.int64))
            starts.append(np.full(c - min_context, f, dtype=np.int64))
    if not targets:
        return Samples(np.zeros(0, np.int64), np.zeros(0, np.int64), split)
    s = Samples(np.concatenate(targets), np.concatenate(starts), split)
    if max_samples is not None and len(s) > max_samples:
        rng = np.random.default_rng(seed)
        s = s.subset(np.sort(rng.choice(len(s), size=max_samples, replace=False)))
    return s


def gather_context(vectors: np.ndarray, ctx_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 [n, L, D] context vectors (zeros where padded) and the bool mask of real slots."""
    mask = ctx_ids >= 0
    out = np.asarray(vectors[np.where(mask, ctx_ids, 0).reshape(-1)], dtype=np.float32)
    out = out.reshape(*ctx_ids.shape, vectors.shape[1])
    out[~mask] = 0.0
    return out, mask
