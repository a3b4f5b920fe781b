"""The LVM training task for the shared loop: next-chunk-vector regression (+ optional in-batch InfoNCE).

Samples are every position of every TRAIN article (``make_samples(bank, "train", min_context=1)``); contexts
shorter than L are padded on the left and masked. The bank is loaded once as a float32 tensor on the device.

Loss on unit vectors ``p`` (prediction) and ``t`` (true next chunk), averaged over the micro-batch::

    w_cos * (1 - cos(p, t)) + w_mse * mean((p - t) ** 2) + w_nce * InfoNCE(p, in-batch targets, tau)

``mean((p - t) ** 2)`` is the element-wise MSE; on unit vectors it equals ``2 (1 - cos) / D``. InfoNCE
scores ``p . t_j / tau`` against every target of the micro-batch; targets whose vector is exactly equal to
the positive's (same text encoded twice, boilerplate) are masked out as negatives. Under torchrun the
InfoNCE candidates are the targets of ALL ranks (gathered by id, in rank order; targets are bank vectors,
so no gradient crosses ranks) and a local row's label is ``offset + i`` (offset = rows of lower ranks).

Validation (each epoch, on the val split, against the FULL bank): mean cosine to the true next vector,
Recall@{1,10,100} and MRR@10 with the prediction as query (exact search by matmul, context ids excluded,
same-text hits; ``vecrag.scoring.metrics.first_hit_rank``), plus the same numbers for the anchor heuristic,
copy-last and mean of context as ``baseline_*`` keys.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vecrag.bank.sequences import make_samples
from vecrag.bank.store import Bank
from vecrag.config import TrainConfig
from vecrag.errors import VecragError
from vecrag.index.search import ExactTorchIndex
from vecrag.models.lvm import LVM, LVMModelConfig
from vecrag.runtime import to_device
from vecrag.scoring.evaluators import NextVectorEvaluator, vector_groups
from vecrag.scoring.predictors import DEFAULT_EWMA_ALPHA, HeuristicPredictor
from vecrag.train import distributed as dd
from vecrag.train.graphed import Staged
from vecrag.train.losses import info_nce

log = logging.getLogger(__name__)
VAL_KS = (1, 10, 100)


@dataclass
class LVMLossConfig:
    w_cos: float = field(default=1.0, metadata={"help": "weight of the cosine loss 1 - cos(prediction, next vector)"})
    w_mse: float = field(default=0.0, metadata={"help": "weight of the mean squared error to the next vector"})
    w_nce: float = field(default=0.0, metadata={"help": "weight of the in-batch InfoNCE loss (the other targets are "
                                                        "negatives; keeps predictions retrievable)"})
    tau: float = field(default=0.05, metadata={"help": "InfoNCE temperature (logits = cosine / tau)"})

    def validate(self) -> None:
        if min(self.w_cos, self.w_mse, self.w_nce) < 0 or self.w_cos + self.w_mse + self.w_nce <= 0:
            raise VecragError("loss weights must be >= 0 and not all zero",
                              hint="e.g. loss.w_cos=1 loss.w_nce=0.1")
        if self.tau <= 0:
            raise VecragError(f"loss.tau must be > 0, got {self.tau}")


@dataclass
class LVMConfig:
    bank: str = field(default="", metadata={"help": "the bank trained on (set from BANK by vecrag train lvm)"})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(early_stop_metric="cos"),
                               metadata={"help": "the shared training loop"})
    model: LVMModelConfig = field(default_factory=LVMModelConfig, metadata={"help": "the LVM architecture"})
    loss: LVMLossConfig = field(default_factory=LVMLossConfig, metadata={"help": "the training loss"})


def lvm_loss(pred: torch.Tensor, target: torch.Tensor, cfg: LVMLossConfig,
             groups: torch.Tensor | None = None, *, cands: torch.Tensor | None = None,
             cand_groups: torch.Tensor | None = None, offset: int = 0
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted loss on unit vectors and its parts; ``groups`` (exact-duplicate id per target) masks
    duplicates of the positive out of the InfoNCE negatives. ``cands`` / ``cand_groups``: the InfoNCE
    candidates when they are more than this batch's targets (all ranks' targets under torchrun; row ``i``'s
    positive is candidate ``offset + i``); default: ``target`` / ``groups``."""
    pred, target = pred.float(), target.float()
    cos = (pred * target).sum(-1)
    l_cos = (1.0 - cos).mean()
    l_mse = ((pred - target) ** 2).mean()
    loss = cfg.w_cos * l_cos + cfg.w_mse * l_mse
    # 0-d tensors: the trainer reads them when it logs (a float() here would wait for the GPU every step)
    stats = {"cos": cos.detach().mean(), "loss_cos": l_cos.detach(), "loss_mse": l_mse.detach()}
    if cfg.w_nce > 0:
        # in-batch InfoNCE: every other target (all ranks' under torchrun) is a negative, and so is none of the
        # positive's exact duplicates; row i's positive is candidate offset + i
        cands = target if cands is None else cands.float()
        cand_groups = groups if cand_groups is None else cand_groups
        rows = torch.arange(pred.shape[0], device=pred.device) + offset
        # a comparison, not own[rows, labels] = True: that index_put waits for the GPU (found on the H200)
        excluded = rows[:, None] == torch.arange(cands.shape[0], device=pred.device)[None, :]
        if groups is not None:
            excluded = excluded | (groups[:, None] == cand_groups[None, :])
        l_nce, nce = info_nce(pred, target, [(cands, excluded)], tau=cfg.tau)
        loss = loss + cfg.w_nce * l_nce
        stats["loss_nce"] = l_nce.detach()
        stats["nce_acc"] = nce["acc"]
    return loss, stats


class LVMTask:
    name = "lvm"

    def __init__(self, bank: Bank, cfg: LVMConfig):
        self.bank, self.cfg = bank, cfg
        self.L = cfg.train.context
        self.model = LVM(bank.dim, cfg.model, self.L)
        self.train = make_samples(bank, "train", min_context=1)
        if len(self.train) == 0:
            raise VecragError("the bank's train split has no article with 2 or more chunks", path=bank.path,
                              hint="ingest more articles or re-split the bank")
        self.val = make_samples(bank, "val", min_context=1, max_samples=cfg.train.val_max_queries or None, seed=0)
        self.n_train = len(self.train)
        self.train_ctx = torch.from_numpy(self.train.context_ids(self.L))
        self.train_tgt = torch.from_numpy(self.train.target)
        self.groups_np = vector_groups(bank.vectors)
        self.device = torch.device("cpu")
        self.bank_t: torch.Tensor | None = None
        self.index: Any = None  # exact search over bank_t (views of it, no copy), for validation
        self._baselines: dict[str, float] | None = None
        self._evaluator: NextVectorEvaluator | None = None
        self._seen = 0

    # ---- Task protocol -------------------------------------------------------------------------------
    def attach(self, trainer: Any) -> None:
        self.trainer = trainer
        self.device = trainer.device
        self.bank_t = torch.from_numpy(np.array(self.bank.vectors, dtype=np.float32)).to(self.device)
        self.index = ExactTorchIndex(self.bank_t, device=str(self.device), dtype=torch.float32)
        self.groups = torch.from_numpy(self.groups_np).to(self.device)
        # the samples' id tables live where the bank does: a step then copies only its sample indices (pinned,
        # non-blocking) instead of two pageable copies, each a host-GPU sync (docs/bugs-and-fixes.md)
        self.train_ctx, self.train_tgt = self.train_ctx.to(self.device), self.train_tgt.to(self.device)
        trainer.log_record("event", event="lvm_task", n_train=self.n_train, n_val=len(self.val), dim=self.bank.dim,
                           context=self.L, bank=str(self.bank.path), n_bank=self.bank.n,
                           encoder=self.bank.encoder.get("name"))

    def context(self, ctx_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context vectors [n, L, D] (zeros where padded) and the mask, gathered from the device bank."""
        ids = ctx_ids.to(self.device)
        mask = ids >= 0
        ctx = self.bank_t[ids.clamp(min=0)] * mask[:, :, None].float()
        return ctx, mask

    def stage(self, idx: np.ndarray, step: int, *, graphed: bool = False) -> Staged:
        """The micro-batch's sample indices (and, under torchrun, every rank's target ids) for :meth:`compute`."""
        idx = np.asarray(idx, dtype=np.int64)
        self._seen += len(idx)
        arrays = {"idx": idx}
        key: tuple = ()
        if self.cfg.loss.w_nce > 0 and dd.is_distributed():
            all_ids, sizes = dd.gather_ids(self.train.target[idx])
            arrays["all_ids"] = all_ids
            key = ("ranks", dd.offset(sizes))
        return Staged(key, arrays)

    def compute(self, t: dict[str, torch.Tensor], key: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of staged samples, on the device alone (no host sync: the graphed step captures it)."""
        i = t["idx"]
        ctx, mask = self.context(self.train_ctx[i])
        tgt_ids = self.train_tgt[i]
        pred = self.model(ctx, mask)
        if "all_ids" in t:  # torchrun: every rank's targets are the InfoNCE candidates
            all_t = t["all_ids"]
            return lvm_loss(pred, self.bank_t[tgt_ids], self.cfg.loss, self.groups[tgt_ids],
                            cands=self.bank_t[all_t], cand_groups=self.groups[all_t], offset=key[1])
        return lvm_loss(pred, self.bank_t[tgt_ids], self.cfg.loss, self.groups[tgt_ids])

    def loss(self, idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        st = self.stage(idx, step)
        return self.compute({k: to_device(a, self.device) for k, a in st.arrays.items()}, st.key)

    def evaluator(self) -> NextVectorEvaluator:
        """The val split's evaluator (the same object `vecrag eval lvm` scores with), sharing the device bank."""
        if self._evaluator is None:
            self._evaluator = NextVectorEvaluator(self.bank, self.val, self.L, device=self.device, ks=VAL_KS,
                                                  full=False, bank_t=self.bank_t, index=self.index,
                                                  groups=self.groups_np)
        return self._evaluator

    def validate(self, epoch: int) -> dict[str, float]:
        if len(self.val) == 0:
            raise VecragError("the bank's val split has no article with 2 or more chunks", path=self.bank.path,
                              hint="re-split the bank with a larger val share")
        ev = self.evaluator()
        metrics = _scalars(ev(self.model))
        if self._baselines is None:  # the heuristics do not change during training: measure once
            self._baselines = {}
            m = self.cfg.model
            for name, kind in ((f"anchor_{m.anchor}", m.anchor), ("last", "last"), ("mean", "mean")):
                pred = HeuristicPredictor(kind, m.alpha if kind == "ewma" else DEFAULT_EWMA_ALPHA, self.L)
                for k, v in _scalars(ev(pred)).items():
                    self._baselines[f"baseline_{name}_{k}"] = v
        return {**metrics, **self._baselines, "n_val": float(len(self.val))}

    def extra_state(self) -> dict:
        return {"seen": self._seen, "encoder": dict(self.bank.encoder), "dim": self.bank.dim,
                "model_config": dataclasses.asdict(self.cfg.model), "context": self.L}

    def load_extra_state(self, d: dict) -> None:
        self._seen = int(d.get("seen", 0))

    def stats(self) -> dict[str, float]:
        return {"samples_seen": float(self._seen)}

    def close(self) -> None:
        self.bank_t = None


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The log's numbers: an evaluator's scalar metrics (its CIs and sample counts left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)
            and not k.endswith("_ci") and k not in ("n_queries", "n", "median_rank")}
