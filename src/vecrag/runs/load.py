"""Load a trained run: the model and its config from a run directory's ``config.yaml`` and checkpoint.

A run directory (``vecrag train lvm|retriever --out RUN``) holds ``config.yaml`` (the resolved config),
``log.jsonl`` (one record per log step and validation), ``checkpoints/`` (``last.pt``, ``best.pt``, an
``index.json`` with their sha256), ``run.json`` (the bank it trained on) and, for a retriever,
``bank.json`` (the training bank's path, size and encoder); :mod:`vecrag.runs.rundir` creates and guards it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vecrag.bank.store import Bank
from vecrag.errors import VecragError
from vecrag.runs.layout import BANK_INFO, CHECKPOINTS, CONFIG


def load_lvm(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """(model in eval mode, LVMConfig) from a run directory; the checkpoint's sha256 is verified."""
    from vecrag.config import load_config
    from vecrag.models.lvm import LVM
    from vecrag.train.checkpoint import CheckpointDir
    from vecrag.train.lvm_task import LVMConfig

    run = Path(run_dir)
    if not (run / CONFIG).exists():
        raise VecragError("not an LVM run directory (no config.yaml)", path=run,
                          hint="give the --out directory of `vecrag train lvm`")
    cfg = load_config(LVMConfig, run / CONFIG)
    name = checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt"
    ck = CheckpointDir(run / CHECKPOINTS)
    if not ck.path(name).exists():
        raise VecragError(f"checkpoint {name} not found", path=ck.root,
                          hint="train longer, or choose --checkpoint last (available: "
                               + ", ".join(sorted(ck.index)) + ")")
    state = ck.load(name)
    if state.get("task") != "lvm":
        raise VecragError(f"checkpoint is for task {state.get('task')!r}, not an LVM", path=ck.path(name))
    extra = state.get("extra", {})
    model = LVM(int(extra.get("dim", 0)) or _dim_of(state["model"]), cfg.model, cfg.train.context)
    model.load_state_dict(state["model"])
    model.encoder = extra.get("encoder")  # type: ignore[attr-defined]
    return model.to(device).eval(), cfg


def _dim_of(sd: dict[str, torch.Tensor]) -> int:
    return int(sd["head.weight"].shape[0])


def load_retriever(run: str | Path, checkpoint: str = "best", device: str = "cpu") -> tuple[Any, Any, dict]:
    """(RetrieverConfig, RetrieverModel in eval mode, checkpoint summary) of a run directory."""
    from vecrag.config import load_config
    from vecrag.models.towers import RetrieverModel
    from vecrag.train.checkpoint import CheckpointDir
    from vecrag.train.retriever_task import RetrieverConfig

    run = Path(run)
    if not (run / CONFIG).exists():
        raise VecragError("not a retriever run directory (no config.yaml)", path=run,
                          hint="train one with `vecrag train retriever BANK --out RUN`")
    cfg = load_config(RetrieverConfig, run / CONFIG)
    ckpts = CheckpointDir(run / CHECKPOINTS)
    name = checkpoint if checkpoint.endswith(".pt") else f"{checkpoint}.pt"
    state = ckpts.load(name, map_location="cpu")
    if state.get("task") != "retriever":
        raise VecragError(f"checkpoint is for task {state.get('task')!r}, not 'retriever'", path=ckpts.path(name))
    dim = int(state["model"]["query.head.weight"].shape[0])
    model = RetrieverModel(dim, cfg.model)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return cfg, model, {"checkpoint": name, "step": int(state["step"]), "epoch": int(state["epoch"]),
                        "best": state["trainer"].get("best"), "best_epoch": state["trainer"].get("best_epoch")}


def check_bank(run: Path, bank: Bank, dim: int) -> None:
    """Refuse a bank from another encoder than the one the run was trained on."""
    p = Path(run) / BANK_INFO
    if p.exists():
        info = json.loads(p.read_text(encoding="utf-8"))
        bank.check_encoder(info["encoder"]["name"], int(info["encoder"]["dim"]), where=p)
    if bank.dim != dim:
        raise VecragError(f"the tower is {dim}-D but the bank is {bank.dim}-D", path=bank.path,
                          hint="evaluate on a bank built with the run's encoder")
