"""Trained runs and CLI specs as predictors (the one :class:`vecrag.scoring.predictors.Predictor` type).

:func:`load_lvm_predictor` / :func:`load_tower_predictor` wrap the model of a ``vecrag train lvm`` /
``vecrag train retriever`` run (loaded by ``vecrag.runs.load``) in a :class:`TorchPredictor`;
:func:`parse_predictor` turns a CLI spec (``heuristic:ewma``, ``heuristic:ewma:0.3``, ``RUN_DIR``) into one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vecrag.errors import VecragError
from vecrag.scoring.predictors import (
    DEFAULT_CONTEXT_LEN,
    DEFAULT_EWMA_ALPHA,
    HeuristicPredictor,
    Predictor,
    TorchPredictor,
)


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
