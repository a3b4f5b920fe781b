"""The one predictor type: anything that maps a context to a unit vector (an LVM's prediction, a tower's query,
a heuristic, a ridge map)::

    pred(ctx [n, L, D], mask bool [n, L]) -> unit vectors [n, D]

numpy arrays in give numpy float32 out (the cascade, the generator, FAISS); torch tensors in give tensors out on
their device (training validation and the evaluators, which keep the bank on the GPU). ``name`` labels it in
reports and ``context_len`` says how many context chunks it reads (right-aligned).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from vecrag.errors import VecragError
from vecrag.scoring.heuristics import HEURISTICS, heuristic_query, heuristic_query_torch


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


@runtime_checkable
class Predictor(Protocol):
    """context -> unit vector. ``context_len`` is how many context chunks it wants (right-aligned)."""

    name: str
    context_len: int

    def __call__(self, ctx: Any, mask: Any) -> Any: ...


DEFAULT_EWMA_ALPHA = 0.5
DEFAULT_CONTEXT_LEN = 16


class HeuristicPredictor:
    """A heuristic over the context (``last``, ``mean`` or ``ewma`` with ``alpha``)."""

    def __init__(self, kind: str = "ewma", alpha: float = DEFAULT_EWMA_ALPHA,
                 context_len: int = DEFAULT_CONTEXT_LEN):
        if kind not in HEURISTICS:
            raise VecragError(f"unknown heuristic {kind!r}", hint=f"choose one of {', '.join(HEURISTICS)}")
        if not 0.0 < alpha <= 1.0:
            raise VecragError(f"ewma alpha must be in (0, 1], got {alpha}")
        self.kind, self.alpha, self.context_len = kind, float(alpha), int(context_len)
        self.name = f"heuristic:{kind}" + (f":{alpha:g}" if kind == "ewma" else "")

    def __call__(self, ctx: Any, mask: Any) -> Any:
        if _is_tensor(ctx):
            return heuristic_query_torch(ctx, mask, self.kind, self.alpha)
        return heuristic_query(np.asarray(ctx, np.float32), np.asarray(mask, bool), self.kind, self.alpha)

    def __repr__(self) -> str:
        return f"HeuristicPredictor({self.name})"


class TorchPredictor:
    """A trained module ``model(ctx, mask) -> [n, D]``, run under ``torch.inference_mode`` in eval mode."""

    def __init__(self, model: Any, name: str, context_len: int = DEFAULT_CONTEXT_LEN, device: str = "cpu",
                 batch_size: int = 1024):
        self.model = model.eval().to(device)
        self.name, self.context_len, self.device, self.batch_size = name, int(context_len), device, batch_size

    def __call__(self, ctx: Any, mask: Any) -> Any:
        import torch
        import torch.nn.functional as F

        if _is_tensor(ctx):
            with torch.inference_mode():
                return F.normalize(self.model(ctx.to(self.device), mask.to(self.device)).float(), dim=-1)
        outs = []
        with torch.inference_mode():
            for s in range(0, len(ctx), self.batch_size):
                c = torch.from_numpy(np.ascontiguousarray(ctx[s:s + self.batch_size], np.float32)).to(self.device)
                m = torch.from_numpy(np.ascontiguousarray(mask[s:s + self.batch_size], bool)).to(self.device)
                outs.append(F.normalize(self.model(c, m).float(), dim=-1).cpu().numpy())
        d = ctx.shape[-1]
        return np.concatenate(outs) if outs else np.zeros((0, d), np.float32)

    def __repr__(self) -> str:
        return f"TorchPredictor({self.name})"
