"""The training loop's AdamW: built once per run, with flags that belong to the run, not to its checkpoints.

Weight decay on matrices only (biases and norms decay 0); ``fused`` on CUDA (the step is launch-bound there);
``capturable`` when the step is a CUDA graph (its learning rate then lives in a device tensor:
:mod:`vecrag.train.graphed`).
"""

from __future__ import annotations

import torch

from vecrag.config import TrainConfig


def flags(device: torch.device, graphed: bool) -> dict[str, object]:
    """The AdamW flags of a run on ``device``, graphed or not."""
    return {"capturable": graphed, "fused": True if device.type == "cuda" else None, "foreach": None}


def build_adamw(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, graphed: bool) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, **flags(device, graphed))


def restore_flags(optimizer: torch.optim.Optimizer, device: torch.device, graphed: bool) -> None:
    """After ``load_state_dict``, which copies the saved run's ``capturable`` / ``fused`` / ``foreach`` over this
    run's (a checkpoint of a CPU or eager run would turn this run's graphs off, and make its eager AdamW loop over
    parameters): put this run's back, with the step counters where a capturable or fused AdamW keeps them."""
    own = flags(device, graphed)
    for g in optimizer.param_groups:
        g.update(own)
    if own["capturable"] or own["fused"]:
        for p, st in optimizer.state.items():
            if isinstance(st.get("step"), torch.Tensor):
                st["step"] = st["step"].to(device=p.device, dtype=torch.float32)
