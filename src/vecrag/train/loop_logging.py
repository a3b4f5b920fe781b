"""Logging for the shared training loop: RUN/log.jsonl records, TensorBoard scalars, progress bars.

Split out of ``vecrag.train.loop`` (a mixin of ``Trainer``). Under torchrun only rank 0 writes; the train
record's window (loss, samples, task stats) is first combined over all ranks (see :meth:`_reduce_window`).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import torch

from vecrag.fsutil import append_jsonl
from vecrag.train import distributed as dd

log = logging.getLogger("vecrag.train.loop")


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - psutil is a dependency
        return float("nan")


def progress_bar(total: int, initial: int, desc: str, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


class TrainerLogging:
    """``log_record`` / ``_log_train`` / ``_tb_scalars`` for :class:`vecrag.train.loop.Trainer`."""

    log_path: Any
    is_main: bool
    world: int
    step: int
    epoch: int
    quiet: bool
    device: torch.device
    task: Any
    _tb: Any

    def log_record(self, kind: str, **fields: Any) -> None:
        """Append one JSON line (``kind`` = train | val | mining | event) to RUN/log.jsonl (rank 0 only)."""
        if not self.is_main:
            return
        append_jsonl(self.log_path, {"kind": kind, "time": round(time.time(), 3), **fields})

    def _open_tb(self, path: Any) -> None:
        if not self.is_main or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(path))
        except ImportError:
            self._tb = None

    @staticmethod
    def _reduce_window(window: dict[str, float]) -> dict[str, float]:
        """Combine every rank's window (a collective): ``loss`` (each rank's share of the global mean) and
        ``samples`` are summed, ``n`` (steps) is the same everywhere, task stats are averaged over the ranks
        that report them."""
        parts = dd.all_gather_object(dict(window))
        out = {"loss": sum(p["loss"] for p in parts), "n": parts[0]["n"],
               "samples": sum(p["samples"] for p in parts)}
        for k in sorted({k for p in parts for k in p} - set(out)):
            vals = [p[k] for p in parts if k in p]
            out[k] = sum(vals) / len(vals)
        return out

    def _log_train(self, window: dict[str, Any], lr: float, grad_norm: float, seconds: float) -> None:
        window = {k: float(v) for k, v in window.items()}  # device tensors are read here, once per log step
        if self.world > 1:
            window = self._reduce_window(window)
        if not self.is_main:
            return
        n = max(1, int(window.pop("n")))
        samples = window.pop("samples")
        rec = {"step": self.step, "epoch": self.epoch, "loss": window.pop("loss") / n, "lr": lr,
               "grad_norm": grad_norm, "samples_per_s": samples / max(seconds, 1e-9), "rss_mb": round(rss_mb(), 1),
               "cuda_mem_mb": (torch.cuda.max_memory_allocated() / 2**20 if self.device.type == "cuda" else 0.0)}
        rec.update({k: v / n for k, v in window.items()})
        rec.update({k: float(v) for k, v in self.task.stats().items()})
        self.log_record("train", **rec)
        self._tb_scalars("train", rec)
        if self.quiet or not sys.stderr.isatty():
            log.info("step %d epoch %d loss %.5f lr %.2e %.0f samples/s rss %.0f MB", self.step, self.epoch + 1,
                     rec["loss"], lr, rec["samples_per_s"], rec["rss_mb"])

    def _tb_scalars(self, prefix: str, rec: dict[str, Any]) -> None:
        if self._tb is None:
            return
        for k, v in rec.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("step", "epoch"):
                self._tb.add_scalar(f"{prefix}/{k}", v, self.step)
