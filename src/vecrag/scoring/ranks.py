"""The shared hit rules applied to a search: the 0-based rank of each sample's target among an index's results
(context ids excluded, a chunk with the target's text counts as a hit), in batches that stay within a memory budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vecrag.bank.sequences import Samples
from vecrag.bank.store import Bank
from vecrag.scoring.metrics import first_hit_rank

ROW_BUDGET = 1 << 23  # values per batch in a [rows, depth] result or [rows, L * D] context matrix (~32-64 MB)


def retrieve_ranks(index: Any, queries: np.ndarray, samples: Samples, L: int, k: int, *,
                   include_context: bool = False, text_hits: bool = True, bank: Bank | None = None,
                   batch: int = 2048, on_ids: Callable[[slice, np.ndarray], None] | None = None) -> np.ndarray:
    """0-based rank of each sample's target among ``index``'s results for ``queries`` (-1 = not in top ``k``),
    with the hit rules applied. ``index`` is any object with ``search(queries, k) -> (scores, ids)``.
    ``on_ids(rows, ids)`` sees each batch's raw results (``k + L`` deep unless ``include_context``)."""
    if text_hits and bank is None:
        raise ValueError("text_hits needs the bank (for its text groups)")
    tg = bank.text_group if text_hits and bank is not None else None
    n = len(samples)
    if queries.shape[0] != n:
        raise ValueError(f"{queries.shape[0]} queries for {n} samples")
    ranks = np.full(n, -1, dtype=np.int64)
    kk = search_depth(k if include_context else k + L, getattr(index, "ntotal", 0) or (bank.n if bank else 0))
    step = batch_rows(batch, kk)
    for s in range(0, n, step):
        sl = slice(s, min(n, s + step))
        _, ids = index.search(np.ascontiguousarray(queries[sl], dtype=np.float32), kk)
        if on_ids is not None:
            on_ids(sl, ids)
        ranks[sl] = first_hit_rank(ids, samples.target[sl], text_group=tg,
                                   start=None if include_context else context_start(samples, L, sl))
    return ranks


def search_depth(k: int, n: int) -> int:
    """``k`` results, but never deeper than the ``n`` vectors searched (deeper results are only padding)."""
    return min(k, n) if n > 0 else k


def batch_rows(batch: int, per_row: int, budget: int = ROW_BUDGET) -> int:
    """Rows per batch so that ``rows x per_row`` stays within ``budget`` values (at most ``batch``, at least 1)."""
    return max(1, min(batch, budget // max(1, per_row)))


def context_start(samples: Samples, L: int, rows: slice | None = None) -> np.ndarray:
    """First chunk id of each sample's ``L``-chunk context: the context is the ids ``start .. target - 1`` (an
    article's chunks are consecutive), so the hit rules drop it as a range, in memory ``O(k)`` not ``O(k L)``."""
    sub = samples if rows is None else samples.subset(rows)
    return np.maximum(sub.start, sub.target - L)
