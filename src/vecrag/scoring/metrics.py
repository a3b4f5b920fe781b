"""Retrieval metrics with vecrag's hit rules (docs/design.md, metrics).

Hit rules, applied identically to every method:
- the context's own chunk ids are removed from the results before ranking (``exclude_context``);
- a retrieved chunk whose text is byte-identical to the target's text counts as a hit (``text_hits``),
  because boilerplate chunks repeat across articles.
Optional, reported as a variant where used: "never going back" (``start``: each sample's article start) also
removes the article's chunks before the target (``vecrag eval cascade --never-back``).

``first_hit_rank`` returns the 0-based rank of the first hit among the kept results, or -1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vecrag.bank.sequences import before_target

DEFAULT_KS = (1, 5, 10, 50, 100, 500, 1000)


def first_hit_rank(ids: np.ndarray, target: np.ndarray, *, ctx_ids: np.ndarray | None = None,
                   text_group: np.ndarray | None = None, start: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of the target among ``ids`` [n, K] (after dropping context ids), -1 if absent.

    ``ids`` may hold -1 for empty slots (FAISS pads with -1). ``ctx_ids`` [n, L] (-1 padded) are removed
    from the ranking when given. With ``text_group`` (group id per bank chunk), any chunk in the target's
    text group is a hit. With ``start`` [n] (the first chunk id of each sample's article), the article's chunks
    before the target are removed too (never going back).
    """
    ids = np.asarray(ids, dtype=np.int64)
    n, k = ids.shape
    valid = kept_results(ids, ctx_ids, start=start, target=target)
    if text_group is not None:
        hit = text_group[np.where(valid, ids, 0)] == text_group[target][:, None]
    else:
        hit = ids == target[:, None]
    hit &= valid
    rank = np.cumsum(valid, axis=1) - 1  # rank among kept results
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    out = np.full(n, -1, dtype=np.int64)
    found = first >= 0
    out[found] = rank[np.flatnonzero(found), first[found]]
    return out


def kept_results(ids: np.ndarray, ctx_ids: np.ndarray | None = None, *, start: np.ndarray | None = None,
                 target: np.ndarray | None = None) -> np.ndarray:
    """[n, K] True for the results the hit rules keep: not -1 padding and not one of the sample's ``ctx_ids``
    [n, L] (-1 padded); with ``start`` and ``target`` [n], not a chunk of the target's article before it."""
    valid = ids >= 0
    if start is not None:
        valid &= ~before_target(ids, start, target)
    if ctx_ids is not None and ctx_ids.size:
        valid &= ~((ids[:, :, None] == ctx_ids[:, None, :]) & (ctx_ids[:, None, :] >= 0)).any(axis=2)
    return valid


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion."""
    if n == 0:
        return (0.0, 0.0)
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def recall_table(ranks: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS, *, mrr_k: int = 10) -> dict[str, Any]:
    """Recall@K with 95 % CIs, MRR@mrr_k, median rank (1-based, over found targets; inf if most are missing)."""
    n = int(len(ranks))
    out: dict[str, Any] = {"n_queries": n}
    for k in ks:
        r = float(np.mean((ranks >= 0) & (ranks < k))) if n else 0.0
        out[f"R@{k}"] = r
        out[f"R@{k}_ci"] = wilson(r, n)
    rr = np.where((ranks >= 0) & (ranks < mrr_k), 1.0 / np.maximum(ranks + 1.0, 1.0), 0.0)
    out[f"MRR@{mrr_k}"] = float(rr.mean()) if n else 0.0
    filled = np.where(ranks >= 0, ranks + 1, np.iinfo(np.int64).max)
    med = float(np.median(filled)) if n else float("nan")
    out["median_rank"] = med if med < np.iinfo(np.int64).max else float("inf")
    return out


def format_table(rows: dict[str, dict[str, Any]], keys: tuple[str, ...]) -> str:
    """Plain-text table: one row per method, columns ``keys`` (floats in [0,1] shown as percentages)."""
    width = max([len("method")] + [len(r) for r in rows])
    cw = {k: max(10, len(k) + 1) for k in keys}  # a key longer than 9 characters must not glue to its neighbour
    head = "method".ljust(width) + "".join(f"{k:>{cw[k]}}" for k in keys)
    lines = [head, "-" * len(head)]
    for name, row in rows.items():
        cells = []
        for k in keys:
            v = row.get(k, float("nan"))
            w = cw[k]
            if isinstance(v, float) and k.startswith(("R@", "Hit@")):
                cells.append(f"{100 * v:>{w - 1}.2f}%")
            elif isinstance(v, float) and k == "median_rank" and v.is_integer():
                cells.append(f"{int(v):>{w}d}")  # a rank: 13, not 13.0000
            elif isinstance(v, float):
                cells.append(f"{v:>{w}.4f}")
            else:
                cells.append(f"{v!s:>{w}}")
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)
