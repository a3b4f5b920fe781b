"""The ONE training loop, shared by the LVM and the two-tower retriever (docs/design.md, "The one training loop").

Read top to bottom: ``Trainer.fit`` validates the untrained model (epoch 0: the anchor/baseline is the first
"best"), then for each epoch walks a deterministic permutation of ``range(task.n_train)`` in micro-batches,
accumulates ``grad_accum`` of them per AdamW step (linear warm-up, then cosine to ``lr_min``), clips, logs,
checkpoints every ``ckpt_every`` steps, writes a pre-validation checkpoint, validates, keeps ``best.pt`` by
the early-stopping metric, and at the end optionally averages the last K epoch checkpoints (SWA).

Exact resume: a checkpoint holds the whole trainer state at an optimizer-step boundary (model, optimizer,
step, epoch, batch position, every RNG state, the task's extra state, best score); the sampler is a pure
function of ``(seed, epoch)`` and the learning rate a pure function of the step, so a killed run resumed from
any of its checkpoints reaches bit-identical weights on CPU with a deterministic task.

Distributed (``torchrun --nproc_per_node N``, docs/distributed.md): ``train.batch_size`` is the PER-RANK
micro-batch; a global micro-batch of ``batch_size x world_size`` samples is cut from the same permutation and
each rank takes its disjoint slice (:func:`vecrag.train.distributed.shard`). The model is wrapped in DDP
(gradients all-reduced); each rank scales its loss by ``world x local / global`` samples so that the
all-reduced gradient is the gradient of the global batch's mean loss. Rank 0 alone validates (the others
wait for its metrics, bounded by the process-group timeout), writes checkpoints, logs, TensorBoard and the
progress bar. A plain run (no torchrun) takes none of these paths and is unchanged.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from vecrag.config import TrainConfig, save_config, to_dict
from vecrag.errors import VecragError
from vecrag.runs.layout import BEST, CHECKPOINTS, CONFIG, LAST, LOG, TB
from vecrag.runtime import pick_device, priority_stream, report_openmp, set_threads
from vecrag.train import distributed as dd
from vecrag.train.checkpoint import CheckpointDir, rng_state, set_rng_state
from vecrag.train.graphed import GraphTask, StepGraphs, graph_support
from vecrag.train.loop_logging import TrainerLogging, progress_bar, rss_mb
from vecrag.train.optim import build_adamw, restore_flags
from vecrag.train.swa import average_last_epochs

__all__ = ["Task", "Trainer", "lr_at", "rss_mb", "seed_everything"]

log = logging.getLogger(__name__)
FORMAT = 1


@runtime_checkable
class Task(Protocol):
    name: str                      # "lvm" | "retriever"
    model: torch.nn.Module         # the trainable parameters (checkpointed)
    n_train: int                   # number of training samples

    def attach(self, trainer: Trainer) -> None: ...
    def loss(self, idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, Any]]: ...  # floats or 0-d tensors
    def validate(self, epoch: int) -> dict[str, float]: ...
    def extra_state(self) -> dict: ...
    def load_extra_state(self, d: dict) -> None: ...
    def stats(self) -> dict[str, float]: ...
    def close(self) -> None: ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, *, lr: float, lr_min: float, warmup: int, total: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up to ``lr``, then cosine to ``lr_min``."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if total <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return lr_min + 0.5 * (lr - lr_min) * (1.0 + math.cos(math.pi * progress))


class Trainer(TrainerLogging):
    def __init__(self, task: Task, cfg: TrainConfig, run_dir: str | Path, *, run_config: Any = None,
                 quiet: bool = False):
        self.task, self.cfg, self.quiet = task, cfg, quiet
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_config = run_config if run_config is not None else cfg
        self.log_path = self.run_dir / LOG
        dev = pick_device(cfg.device)
        dd.init_from_env(torch.device(dev).type)           # torchrun: join the process group (else no-op)
        self.world, self.rank = dd.world_size(), dd.rank()
        self.is_main = self.rank == 0
        self.threads = set_threads(cfg.torch_threads or dd.default_threads())
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        if self.world > 1 and dev == "cuda":
            dev = f"cuda:{dd.local_rank()}"
        elif self.world > 1 and dev.startswith("cuda:"):
            log.warning("train.device=%s under torchrun: every process uses that GPU; use device=cuda for one GPU "
                        "per process", dev)
        self.device = torch.device(dev)
        self.use_amp = cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda")
        if task.n_train < 1:
            raise VecragError(f"task {task.name!r} has no training samples", hint="check the bank's train split")
        self.global_batch = cfg.batch_size * self.world                     # samples per global micro-batch
        full, rest = divmod(task.n_train, self.global_batch)
        self.n_batches = full + (1 if rest >= self.world else 0)           # micro-batches per epoch
        if self.n_batches < 1:
            raise VecragError(f"{task.n_train} training samples cannot feed {self.world} processes")
        self.steps_per_epoch = math.ceil(self.n_batches / cfg.grad_accum)  # optimizer steps per epoch
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.warmup = max(cfg.warmup_steps, int(cfg.warmup_ratio * self.total_steps))
        task.model.to(self.device)
        self.ddp = dd.wrap_ddp(task.model, self.device) if self.world > 1 else None
        why_eager = graph_support(self.device, self.world, cfg.grad_accum) or (
            "" if isinstance(task, GraphTask) else f"task {task.name!r} has no stage/compute")
        graphed = cfg.cuda_graph != "off" and not why_eager
        if cfg.cuda_graph == "on" and why_eager:
            log.warning("train.cuda_graph=on, but the step runs eager: %s", why_eager)
        self.optimizer = build_adamw(task.model, cfg, self.device, graphed)
        self.graphs = StepGraphs(self) if graphed else None
        self.why_eager = why_eager
        self.ckpts = CheckpointDir(self.run_dir / CHECKPOINTS, keep_last=cfg.keep_last,
                                   keep_preval=max(cfg.keep_last, cfg.swa_last))
        # trainer state (everything below goes into every checkpoint)
        self.step = 0            # optimizer steps taken
        self.epoch = 0           # current sampler epoch (0-based)
        self.batch = 0           # next micro-batch of the epoch
        self.validated = -1      # last validation done (0 = before training, E = after epoch E)
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0
        self.finished = False
        self.history: list[dict[str, float]] = []
        self._perms: dict[int, np.ndarray] = {}
        self._perm_lock = threading.Lock()
        self._tb: Any = None
        self._fresh = True
        task.attach(self)

    # ---- sampler -------------------------------------------------------------------------------------
    def permutation(self, epoch: int) -> np.ndarray:
        with self._perm_lock:
            if epoch not in self._perms:
                rng = np.random.default_rng([self.cfg.seed, epoch])
                self._perms[epoch] = rng.permutation(self.task.n_train).astype(np.int64)
                for old in [e for e in self._perms if e < epoch - 1]:
                    del self._perms[old]
            return self._perms[epoch]

    def batch_at(self, epoch: int, i: int) -> np.ndarray:
        """This rank's sample indices of micro-batch ``i`` of ``epoch`` (deterministic: a miner may look ahead)."""
        if not 0 <= i < self.n_batches:
            raise IndexError(f"batch {i} outside 0..{self.n_batches - 1}")
        g = self.global_batch
        return dd.shard(self.permutation(epoch)[i * g:(i + 1) * g], self.rank, self.world)

    def global_size(self, i: int) -> int:
        """Samples in global micro-batch ``i`` (all ranks together)."""
        return min(self.global_batch, self.task.n_train - i * self.global_batch)

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.batch

    # ---- the loop ------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        with priority_stream(self.device):  # a GPU miner's kernels give way to the trainer's
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        self._start()
        if self.validated < 0:
            self._validate_and_checkpoint(0)            # the anchor / baseline is the first best
        while not self.finished and self.epoch < self.cfg.epochs:
            self._train_epoch()
            self._save(f"epoch-{self.epoch + 1}-preval.pt")
            self.epoch, self.batch = self.epoch + 1, 0
            if self.cfg.max_steps and self.step >= self.cfg.max_steps:
                self.finished = True
            self._validate_and_checkpoint(self.epoch)
        self.finished = True
        average_last_epochs(self)  # train.swa_last
        self._save(LAST)
        self.log_record("event", event="done", step=self.step, best=self.best, best_epoch=self.best_epoch)
        if self._tb is not None:
            self._tb.close()
        dd.barrier()
        return {"step": self.step, "best": self.best, "best_epoch": self.best_epoch, "history": self.history}

    def _train_epoch(self) -> None:
        cfg, model = self.cfg, self.task.model
        model.train()
        bar = progress_bar(self.steps_per_epoch, self.batch // cfg.grad_accum, f"epoch {self.epoch + 1}/{cfg.epochs}",
                           self.quiet or not self.is_main)
        window: dict[str, float] = {"loss": 0.0, "n": 0, "samples": 0}
        if self.graphs is not None:
            self.graphs.discard()  # the last epoch's steps after its last log step are not this window's
        t0 = time.perf_counter()
        while self.batch < self.n_batches and not (cfg.max_steps and self.step >= cfg.max_steps):
            group = range(self.batch, min(self.batch + cfg.grad_accum, self.n_batches))
            idxs = [self.batch_at(self.epoch, i) for i in group]
            total = sum(len(i) for i in idxs) if self.world == 1 else sum(self.global_size(i) for i in group)
            lr = lr_at(self.step, lr=cfg.lr, lr_min=cfg.lr_min, warmup=self.warmup, total=self.total_steps)
            # the graphed step (train/graphed.py): one replay; its loss and stats are summed on the device
            graphed = self.graphs.step(idxs[0], self.step, lr) if self.graphs is not None else None
            if graphed is not None:
                step_loss, grad_norm = graphed
            else:
                step_loss, grad_norm = self._eager_step(idxs, total, lr, window)
            self.step += 1
            self.batch = group.stop
            if graphed is None:
                window["loss"] += step_loss
            window["n"] += 1
            window["samples"] += sum(len(i) for i in idxs)   # this rank's (summed over ranks when logged)
            bar.update(1)
            if not bar.disable and self.step % 10 == 0:  # rank 0's rows, rescaled (a sync: not every step)
                bar.set_postfix(loss=f"{float(step_loss) * self.world:.4f}", lr=f"{lr:.2e}")
            if self.step % cfg.log_every == 0:
                if self.graphs is not None:
                    self.graphs.drain(window)
                self._log_train(window, lr, float("nan") if grad_norm is None else float(grad_norm),
                                time.perf_counter() - t0)
                window, t0 = {"loss": 0.0, "n": 0, "samples": 0}, time.perf_counter()
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self._save(f"step-{self.step}.pt")
        bar.close()

    def _eager_step(self, idxs: list[np.ndarray], total: int, lr: float, window: dict[str, Any]
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step without a graph: forward and backward of each micro-batch of the accumulation
        group, clip, AdamW. Returns the step's loss and gradient norm as device tensors."""
        cfg, model = self.cfg, self.task.model
        if self.graphs is not None:  # graphs read the learning rate from their device tensor
            self.graphs.set_lr(lr)
        else:
            for g in self.optimizer.param_groups:
                g["lr"] = lr
        # loss, stats and grad norm stay device tensors until a log step reads them: a float() per step
        # would make the CPU wait for the GPU's queue every step (docs/benchmarks.md, "host syncs")
        step_loss = torch.zeros((), device=self.device)
        for j, idx in enumerate(idxs):                # gradient accumulation: mean over the whole group
            with self._no_sync(j < len(idxs) - 1):
                with self._autocast():
                    loss, stats = self._loss(idx)
                (loss * (self.world * len(idx) / total)).backward()  # world = 1: len(idx) / total
            step_loss += loss.detach().float() * (len(idx) / total)
            for k, v in stats.items():
                window[k] = window.get(k, 0.0) + v / len(idxs)
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                     if cfg.clip_norm > 0 else None)
        self.optimizer.step()
        # a graph holds the gradient buffers it captured: keep them (zeroed), never free them
        self.optimizer.zero_grad(set_to_none=self.graphs is None)
        return step_loss, grad_norm

    def _loss(self, idx: np.ndarray) -> tuple[torch.Tensor, dict[str, float]]:
        if self.ddp is None:
            return self.task.loss(idx, self.step)
        return self.ddp(self.task.loss, idx, self.step)  # inside DDP's forward (see distributed.StepModule)

    def _no_sync(self, skip: bool) -> Any:
        """DDP: no gradient all-reduce for the micro-batches before the last of an accumulation group."""
        return self.ddp.no_sync() if skip and self.ddp is not None else nullcontext()

    def _save(self, name: str) -> None:
        if self.is_main:
            self.ckpts.save(name, self.state_dict())

    def _run_validation(self, epoch: int) -> dict[str, float]:
        """``task.validate`` on rank 0; under torchrun every rank receives rank 0's metrics (or its error), so
        early stopping, ``best`` and ``history`` stay identical on all ranks."""
        model = self.task.model
        metrics: dict[str, float] | None = None
        failure: str | None = None
        if self.is_main:
            model.eval()
            try:
                with torch.no_grad():
                    metrics = {k: float(v) for k, v in self.task.validate(epoch).items()}
            except Exception as e:
                if self.world == 1:
                    raise
                failure = f"{type(e).__name__}: {e}"
                dd.broadcast_object((None, failure))
                raise
            model.train()
        if self.world > 1:
            metrics, failure = dd.broadcast_object((metrics, failure))
            if failure is not None:
                raise VecragError(f"validation failed on rank 0 ({failure})")
        assert metrics is not None
        return metrics

    def _validate_and_checkpoint(self, epoch: int) -> None:
        t0 = time.perf_counter()
        metrics = self._run_validation(epoch)
        key = self.cfg.early_stop_metric
        if key not in metrics:
            raise VecragError(f"early_stop_metric {key!r} is not among the validation metrics",
                              hint="set train.early_stop_metric to one of: " + ", ".join(sorted(metrics)))
        score = metrics[key]
        better = (self.best is None or (score > self.best if self.cfg.early_stop_mode == "max" else score < self.best))
        if better:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
        elif epoch > 0:
            self.bad_epochs += 1
        self.validated = epoch
        self.history.append({"epoch": epoch, "step": self.step, **metrics})
        self.log_record("val", epoch=epoch, step=self.step, **metrics, best=self.best, best_epoch=self.best_epoch,
                        improved=better, val_s=round(time.perf_counter() - t0, 3))
        self._tb_scalars("val", metrics)
        if self.is_main:
            log.info("val epoch %d step %d: %s=%.4f (best %.4f at epoch %d)%s", epoch, self.step, key, score,
                     self.best, self.best_epoch, "  *" if better else "")
        if self.cfg.patience and self.bad_epochs >= self.cfg.patience and not self.finished:
            self.finished = True
            self.log_record("event", event="early_stop", epoch=epoch, step=self.step, best_epoch=self.best_epoch)
            log.info("early stop: %d epochs without improvement of %s", self.bad_epochs, key)
        # best first, then last: a kill between the two leaves the newest file a complete post-val state
        if better:
            self._save(BEST)
            if self.is_main:
                self.ckpts.copy(BEST, LAST)
        else:
            self._save(LAST)

    # ---- state ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        opt = self.optimizer.state_dict()
        for g in opt["param_groups"]:  # the graphed step's learning rate is a device tensor: store a number
            if isinstance(g.get("lr"), torch.Tensor):
                g["lr"] = float(g["lr"])
        state = {
            "format": FORMAT, "task": self.task.name,
            "model": self.task.model.state_dict(), "optimizer": opt,
            "scheduler": {"kind": "warmup_cosine", "lr": self.cfg.lr, "lr_min": self.cfg.lr_min,
                          "warmup": self.warmup, "total_steps": self.total_steps},
            "step": self.step, "epoch": self.epoch, "batch": self.batch,
            "rng": rng_state(), "extra": self.task.extra_state(), "config": to_dict(self.run_config),
            "trainer": {"validated": self.validated, "best": self.best, "best_epoch": self.best_epoch,
                        "bad_epochs": self.bad_epochs, "finished": self.finished, "history": self.history},
        }
        if self.world > 1:  # torchrun: "rng" is rank 0's; the other ranks re-seed from (seed, rank, step)
            state["world_size"] = self.world
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("task") != self.task.name:
            raise VecragError(f"checkpoint is for task {state.get('task')!r}, not {self.task.name!r}")
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world:
            raise VecragError(f"checkpoint was written by a run of {saved_world} process(es), this one has "
                              f"{self.world}: the sampler position counts global batches of batch_size x processes",
                              hint=f"resume with {saved_world} process(es) in total (torchrun --nnodes x "
                                   "--nproc_per_node)")
        self.task.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_flags(self.optimizer, self.device, self.graphs is not None)  # this run's, not the checkpoint's
        self.step, self.epoch, self.batch = int(state["step"]), int(state["epoch"]), int(state["batch"])
        tr = state["trainer"]
        self.validated, self.best, self.best_epoch = int(tr["validated"]), tr["best"], int(tr["best_epoch"])
        self.bad_epochs, self.finished, self.history = int(tr["bad_epochs"]), bool(tr["finished"]), list(tr["history"])
        self.task.load_extra_state(state.get("extra") or {})
        if self.rank == 0:
            set_rng_state(state["rng"])
        else:
            seed_everything(dd.rank_seed(self.cfg.seed, self.rank, self.step))
        if state.get("config") != to_dict(self.run_config):
            log.warning("the run's config differs from the checkpoint's; resuming with the run's config "
                        "(results will not match an uninterrupted run)")
        self._fresh = False

    @classmethod
    def resume(cls, run_dir: str | Path, task: Task, cfg: TrainConfig, *, run_config: Any = None,
               quiet: bool = False) -> Trainer:
        """A trainer restored from the newest good checkpoint of ``run_dir`` (fresh if there is none)."""
        t = cls(task, cfg, run_dir, run_config=run_config, quiet=quiet)
        got = t.ckpts.load_latest() if t.is_main else None
        if t.ckpts.rebuilt:
            t.log_record("event", event="index_rebuilt", reason=t.ckpts.rebuilt_reason, files=t.ckpts.rebuilt)
        name = dd.broadcast_object(got[0] if got is not None else None)  # every rank loads the same file
        if name is None:
            log.warning("no usable checkpoint in %s; starting the run from the beginning", t.ckpts.root)
            return t
        state = got[1] if got is not None else t.ckpts.load(name)
        t.load_state_dict(state)
        t.log_record("event", event="resume", checkpoint=name, step=t.step, epoch=t.epoch, batch=t.batch)
        log.info("resumed from %s: step %d, epoch %d, batch %d", name, t.step, t.epoch, t.batch)
        return t

    # ---- start -------------------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._fresh:
            seed_everything(self.cfg.seed if self.rank == 0 else dd.rank_seed(self.cfg.seed, self.rank, 0))
            if self.is_main and not (self.run_dir / CONFIG).exists():
                save_config(self.run_config, self.run_dir / CONFIG)
        libs = report_openmp()
        self.log_record("event", event="start", fresh=self._fresh, device=str(self.device), amp=self.use_amp,
                        cuda_graph=self.graphs is not None, eager_because=self.why_eager,
                        threads=self.threads, openmp=libs, n_train=self.task.n_train, n_batches=self.n_batches,
                        steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                        params=sum(p.numel() for p in self.task.model.parameters()),
                        **({"world_size": self.world, "global_batch": self.global_batch} if self.world > 1 else {}))
        if self.cfg.tensorboard:
            self._open_tb(self.run_dir / TB)

    def _autocast(self) -> Any:
        if self.use_amp:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()
