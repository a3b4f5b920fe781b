"""The query heuristics (copy-last, mean, ewma) over a context of chunk vectors (numpy and torch versions agree).

All take right-aligned contexts ``ctx`` [n, L, D] with a bool ``mask`` [n, L] (True = real chunk) and return
unit vectors [n, D]. ``ewma(alpha)`` weights the chunk ``j`` steps before the end by ``(1 - alpha) ** j``
(the last chunk weighs 1), so a small alpha approaches the mean and alpha = 1 is the last vector.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HEURISTICS = ("last", "mean", "ewma")


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ewma_weights(L: int, alpha: float) -> np.ndarray:
    return (1.0 - alpha) ** np.arange(L - 1, -1, -1, dtype=np.float64)


def heuristic_query(ctx: np.ndarray, mask: np.ndarray, kind: str = "last", alpha: float = 0.1) -> np.ndarray:
    """Query vectors from a context by one heuristic: ``last``, ``mean`` or ``ewma``."""
    if kind == "last":
        return _normalize(ctx[:, -1, :].astype(np.float32))
    if kind == "mean":
        w = mask.astype(np.float32)
    elif kind == "ewma":
        w = ewma_weights(ctx.shape[1], alpha).astype(np.float32)[None, :] * mask
    else:
        raise ValueError(f"unknown heuristic {kind!r}; choose one of {HEURISTICS}")
    return _normalize(np.einsum("nl,nld->nd", w, ctx.astype(np.float32)))


def heuristic_query_torch(ctx: Any, mask: Any, kind: str = "last", alpha: float = 0.1) -> Any:
    """Torch twin of :func:`heuristic_query` (used as the anchor of query towers and LVMs)."""
    import torch
    import torch.nn.functional as F

    if kind == "last":
        return F.normalize(ctx[:, -1, :], dim=-1)
    m = mask.to(ctx.dtype)
    if kind == "mean":
        w = m
    elif kind == "ewma":
        L = ctx.shape[1]
        # a Python float base: torch.tensor(base, device=cuda) was a blocking host-to-device copy, i.e. a
        # host-GPU sync in every training step (found with torch.cuda.set_sync_debug_mode, docs/bugs-and-fixes.md)
        w = torch.pow(1.0 - alpha, torch.arange(L - 1, -1, -1, device=ctx.device, dtype=ctx.dtype))[None, :] * m
    else:
        raise ValueError(f"unknown heuristic {kind!r}; choose one of {HEURISTICS}")
    return F.normalize(torch.einsum("nl,nld->nd", w, ctx), dim=-1)
