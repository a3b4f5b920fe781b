"""Predictors: anything that maps a context to a unit vector (LVM prediction or tower query).

``Predictor`` is the small interface the cascade and the generator use::

    pred(ctx float32 [n, L, D], mask bool [n, L]) -> float32 unit vectors [n, D]

Implementations: :class:`HeuristicPredictor` (``last`` / ``mean`` / ``ewma``, the anchors of
:mod:`vecrag.scoring.heuristics`) and :class:`TorchPredictor` (a trained ``torch.nn.Module``: an LVM from
``vecrag train lvm`` or a query tower from ``vecrag train retriever``, loaded by
:func:`load_lvm_predictor` / :func:`load_tower_predictor`, which call ``vecrag.runs.load.load_lvm``
and ``vecrag.runs.load.load_retriever``).
:func:`parse_predictor` turns a CLI spec (``heuristic:ewma``, ``heuristic:ewma:0.3``, ``RUN_DIR``) into one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vecrag.errors import VecragError
from vecrag.scoring.heuristics import HEURISTICS, heuristic_query

DEFAULT_EWMA_ALPHA = 0.5
DEFAULT_CONTEXT_LEN = 16


@runtime_checkable
class Predictor(Protocol):
    """context -> unit vector. ``context_len`` is how many context chunks it wants (right-aligned)."""

    name: str
    context_len: int

    def __call__(self, ctx: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


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

    def __call__(self, ctx: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return heuristic_query(np.asarray(ctx, np.float32), np.asarray(mask, bool), self.kind, self.alpha)

    def __repr__(self) -> str:
        return f"HeuristicPredictor({self.name})"


class TorchPredictor:
    """A trained module ``model(ctx, mask) -> [n, D]``, run under ``torch.inference_mode`` in eval mode."""

    def __init__(self, model: Any, name: str, context_len: int = DEFAULT_CONTEXT_LEN, device: str = "cpu",
                 batch_size: int = 1024):
        self.model = model.eval().to(device)
        self.name, self.context_len, self.device, self.batch_size = name, int(context_len), device, batch_size

    def __call__(self, ctx: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

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


def _run_dir(run: str | Path, what: str) -> Path:
    p = Path(run)
    if not p.is_dir():
        raise VecragError(f"{what} run directory not found", path=p,
                          hint=f"pass a run directory from `vecrag train {what}`, or heuristic:last / "
                               "heuristic:ewma")
    return p


def load_lvm_predictor(run: str | Path, *, device: str = "cpu", bank: Any = None,
                       checkpoint: str = "best") -> Predictor:
    """The LVM of a `vecrag train lvm` run (``checkpoints/best.pt``, sha256-verified) as a Predictor.

    Thin glue over :func:`vecrag.runs.load.load_lvm`; the context length is the run's ``train.context``.
    """
    from vecrag.runs.load import load_lvm

    p = _run_dir(run, "lvm")
    model, cfg = load_lvm(p, checkpoint, device)
    enc = getattr(model, "encoder", None)
    if bank is not None:
        if isinstance(enc, dict) and enc.get("name"):
            bank.check_encoder(enc["name"], int(enc.get("dim") or model.dim), where=p)
        elif int(model.dim) != bank.dim:
            raise VecragError(f"the LVM is {model.dim}-D but the bank is {bank.dim}-D", path=p,
                              hint="use the bank the LVM was trained on")
    return TorchPredictor(model, f"lvm:{p.name}", int(cfg.train.context), device)


def load_tower_predictor(run: str | Path, *, device: str = "cpu", bank: Any = None,
                         checkpoint: str = "best") -> Predictor:
    """The query tower of a `vecrag train retriever` run (``checkpoints/best.pt``) as a Predictor.

    Thin glue over :func:`vecrag.runs.load.load_retriever`. The cascade searches the bank's own
    index, so a run with a learned (non-identity) doc tower is refused.
    """
    from vecrag.runs.load import check_bank, load_retriever

    p = _run_dir(run, "retriever")
    cfg, model, _ = load_retriever(p, checkpoint, device)
    if not model.doc.is_identity:
        raise VecragError("this retriever has a learned doc tower; the cascade searches the raw bank index",
                          path=p, hint="use a run trained with model.doc=identity")
    if bank is not None:
        check_bank(p, bank, int(model.query.dim))
    return TorchPredictor(model.query, f"tower:{p.name}", int(cfg.train.context), device)


def parse_predictor(spec: str, role: str, *, device: str = "cpu", bank: Any = None,
                    context_len: int | None = None) -> Predictor:
    """``heuristic:KIND[:ALPHA]`` or a run directory; ``role`` is ``lvm`` or ``retriever``."""
    if spec.startswith("heuristic:"):
        parts = spec.split(":")
        kind = parts[1] if len(parts) > 1 else ""
        try:
            a = float(parts[2]) if len(parts) > 2 else DEFAULT_EWMA_ALPHA
        except ValueError as e:
            raise VecragError(f"bad heuristic spec {spec!r}", hint="e.g. heuristic:ewma:0.5") from e
        return HeuristicPredictor(kind, a, context_len or DEFAULT_CONTEXT_LEN)
    if role == "lvm":
        return load_lvm_predictor(spec, device=device, bank=bank)
    return load_tower_predictor(spec, device=device, bank=bank)
