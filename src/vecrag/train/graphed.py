"""The whole training step as CUDA graphs (``train.cuda_graph``): one replay a step instead of hundreds of launches.

On a GPU a retriever or LVM step is a few hundred small kernels; launched one by one from Python the step is
host-bound (an H200 ran the retriever-gpu tower's step at ~10 ms eager against ~1.6 ms as one graph:
docs/benchmarks.md). :class:`StepGraphs` captures, once per batch shape, everything from the staged sample ids to
the optimizer update::

    zero grads -> task.compute(staged ids) under bf16 autocast -> backward -> clip -> AdamW (lr from a device tensor)
    -> add the loss, the grad norm and the task's stats to a device accumulator

and replays it every step. The host side of a step is the task's ``stage`` (sample ids, the queue's ids, an async
miner's negatives: int64 arrays), ONE pinned non-blocking copy of them into the graph's static input buffer, one
``fill_`` of the learning rate and the replay: nothing waits for the GPU, so the host stages batch i + 1 while the
GPU runs batch i. The loss and the task's stats stay on the device until a log step reads the accumulators.

A task opts in with ``stage(idx, step, graphed=True) -> Staged`` and ``compute(tensors, key) -> (loss, stats)``
(:class:`GraphTask`); its ``loss(idx, step)`` is ``compute`` of the eager staging, so eager and graphed steps run
the same function. A graph is captured per key (the task's key: curriculum phase, mined in the step or not; and
the arrays' shapes: the last partial batch of an epoch is its own shape) and kept while used (at most
``max_graphs``: the least recently replayed is dropped, as a finished curriculum phase's are). Capture needs the
optimizer's state to exist, so the first step of a fresh run is eager; the warm-up iterations before a capture run
on a side stream and are undone (weights, gradients, optimizer state, the task's device counters and the RNG
states are put back), so capturing does not change the trajectory. A step
that cannot be captured (a host sync in a custom model, an old driver) runs eager from then on, and the run's log
says so once (event ``cuda_graph``).

Resume: checkpoints are written between replays from the same weights and optimizer state; a resumed run captures
again. On the GPU the graphed step is deterministic for a fixed capture, but graphed and eager steps differ by
float rounding (kernel choice, fused bf16 casts), so a killed run resumed on a GPU follows the uninterrupted one
within rounding, not bit for bit (CPU runs never use graphs and stay bit-exact).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class Staged:
    """One micro-batch staged on the host: ``arrays`` (int64, copied to the device as one buffer), the ``key``
    that picks the computation (arrays of other shapes get their own graph too), and ``after``: host bookkeeping
    to run once the step is queued (the memory-bank queue's push)."""

    key: Hashable
    arrays: dict[str, np.ndarray]
    after: Callable[[], None] | None = None
    host_stats: dict[str, float] = field(default_factory=dict)

    def finish(self) -> None:
        if self.after is not None:
            self.after()


@runtime_checkable
class GraphTask(Protocol):
    def stage(self, idx: np.ndarray, step: int, *, graphed: bool = False) -> Staged: ...
    def compute(self, t: dict[str, torch.Tensor], key: Hashable) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def graph_support(device: torch.device, world: int, grad_accum: int) -> str:
    """Why the step cannot be graphed here ("" when it can)."""
    if device.type != "cuda":
        return f"device {device.type} (CUDA graphs need a CUDA device)"
    if world > 1:
        return "torchrun (each DDP all-reduce would have to be captured; the step runs eager)"
    if grad_accum > 1:
        return "grad_accum > 1 (the step runs eager)"
    return ""


@dataclass
class _Sums:
    acc: torch.Tensor                      # [2 + n_stats] float32: loss, grad-norm sum, stats (summed over replays)
    names: list[str]                       # the stats' names, in acc order after loss and grad norm
    replays: int = 0                       # replays since the last read

    def read_into(self, window: dict[str, Any]) -> None:
        if self.replays:
            vals = self.acc.tolist()  # a host sync: log steps only
            window["loss"] = window.get("loss", 0.0) + vals[0]
            for n, v in zip(self.names, vals[2:], strict=True):
                window[n] = window.get(n, 0.0) + v
        self.reset()

    def reset(self) -> None:
        self.acc.zero_()
        self.replays = 0


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    flat: torch.Tensor                     # static input: every staged array, concatenated (int64)
    sums: _Sums                            # the loss and stats of its replays, summed on the device
    grad_norm: torch.Tensor                # the last replay's gradient norm
    loss: torch.Tensor                     # the last replay's loss


class StepGraphs:
    """The trainer's graphed step (see the module docstring). ``step`` returns the step's (loss, grad norm) as
    device tensors, or None when this step must run eager (the caller then runs its eager step)."""

    def __init__(self, trainer: Any, *, max_graphs: int = 8, warmup: int = 2):
        self.t = trainer
        self.task = trainer.task
        self.device = trainer.device
        self.max_graphs = int(max_graphs)
        self.warmup = int(warmup)
        self.lr = torch.zeros((), dtype=torch.float32, device=self.device)
        self.graphs: OrderedDict[Hashable, _Graph] = OrderedDict()
        self._retired: list[_Sums] = []  # the sums of dropped graphs, not read yet
        self.failed: str | None = None
        self._pool: Any = None
        self._eager_sums: dict[str, Any] = {}
        self.captures = 0

    # ---- the step ------------------------------------------------------------------------------------------
    def step(self, idx: np.ndarray, step: int, lr: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.failed is not None or not self.t.optimizer.state:
            return None  # capture needs the optimizer's state: the first step of a fresh run is eager
        st = self.task.stage(idx, step, graphed=True)
        self.lr.fill_(lr)  # this step's, whether it replays, is captured first, or runs eager
        key = (st.key, tuple((k, a.shape) for k, a in st.arrays.items()))
        g = self.graphs.get(key)
        if g is None:
            g = self._capture(key, st)
            if g is None:
                return self._eager(st)
            while len(self.graphs) > self.max_graphs:  # the least recently replayed: a finished phase's
                self._retired.append(self.graphs.popitem(last=False)[1].sums)
        self.graphs.move_to_end(key)
        g.flat.copy_(_pinned_flat(st.arrays), non_blocking=True)  # stream-ordered after the last replay's reads
        g.graph.replay()
        g.sums.replays += 1
        st.finish()
        return g.loss, g.grad_norm

    def _eager(self, st: Staged) -> tuple[torch.Tensor, torch.Tensor]:
        """One step without a graph, from the same staged arrays (after a capture failed)."""
        t = _views(_pinned_flat(st.arrays).to(self.device, non_blocking=True), st.arrays)
        self.set_lr()
        loss, gn, stats = self._body(t, st.key)
        st.finish()
        for k, v in {"loss": loss, **stats}.items():
            self._eager_sums[k] = self._eager_sums.get(k, 0.0) + v
        return loss, gn

    def _body(self, t: dict[str, torch.Tensor], key: Hashable
              ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        cfg, model, opt = self.t.cfg, self.task.model, self.t.optimizer
        opt.zero_grad(set_to_none=False)
        amp = (torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False) if self.t.use_amp
               else nullcontext())
        with amp:
            loss, stats = self.task.compute(t, key)
        loss.backward()
        params = [p for p in model.parameters() if p.requires_grad]
        gn = (torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm) if cfg.clip_norm > 0
              else torch.zeros((), device=self.device))
        opt.step()
        return loss.detach().float(), gn.detach().float(), {k: torch.as_tensor(v, device=self.device).float()
                                                             for k, v in stats.items()}

    # ---- capture -------------------------------------------------------------------------------------------
    def _capture(self, key: Hashable, st: Staged) -> _Graph | None:
        flat = _pinned_flat(st.arrays).to(self.device)
        views = _views(flat, st.arrays)
        self.set_lr()
        saved = self._snapshot()
        stream = torch.cuda.current_stream(self.device)  # a broken capture can leave the capture stream current
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    _, _, stats = self._body(views, st.key)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._restore(saved)
            names = sorted(stats)
            acc = torch.zeros(2 + len(names), dtype=torch.float32, device=self.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                loss, gn, stats = self._body(views, st.key)
                acc.add_(torch.stack([loss, gn, *(stats[n] for n in names)]))
            self._pool = graph.pool()
        except Exception as err:  # noqa: BLE001 -- any capture failure: this run's steps run eager
            torch.cuda.set_stream(stream)
            self._restore(saved)
            from vecrag.train.mining.graph import release_rng

            release_rng(self.device)
            self.failed = f"{type(err).__name__}: {err}"
            self._retired.extend(g.sums for g in self.graphs.values())  # their steps are still logged
            self.graphs.clear()
            log.warning("training runs without CUDA graphs (capture failed: %s); results are the same, steps are "
                        "slower", self.failed)
            self.t.log_record("event", event="cuda_graph", ok=False, reason=self.failed, step=self.t.step)
            return None
        self.captures += 1
        g = _Graph(graph, flat, _Sums(acc, names), gn, loss)
        self.graphs[key] = g
        self.t.log_record("event", event="cuda_graph", ok=True, key=repr(key[0]), shapes=repr(key[1]),
                          graphs=len(self.graphs), step=self.t.step)
        return g

    def set_lr(self, lr: float | None = None) -> None:
        """Every parameter group reads its learning rate from :attr:`lr` (the tensor the graphs captured);
        ``lr``: its new value (a kernel, no host sync)."""
        if lr is not None:
            self.lr.fill_(lr)
        for grp in self.t.optimizer.param_groups:
            if grp["lr"] is not self.lr:
                grp["lr"] = self.lr

    def _snapshot(self) -> dict[str, Any]:
        model, opt = self.task.model, self.t.optimizer
        return {"params": [p.detach().clone() for p in model.parameters()],
                "grads": [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
                "opt": {id(p): {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                        for p, s in opt.state.items()},
                "task": [x.clone() for x in getattr(self.task, "graph_state", list)()],
                "rng": (torch.get_rng_state(), torch.cuda.get_rng_state(self.device))}

    @torch.no_grad()
    def _restore(self, saved: dict[str, Any]) -> None:
        model, opt = self.task.model, self.t.optimizer
        for p, v, gr in zip(model.parameters(), saved["params"], saved["grads"], strict=True):
            p.copy_(v)
            if p.grad is not None:
                p.grad.copy_(gr) if gr is not None else p.grad.zero_()
        for p, s in opt.state.items():
            old = saved["opt"].get(id(p), {})
            for k, v in s.items():
                if isinstance(v, torch.Tensor):
                    v.copy_(old[k]) if k in old else v.zero_()
        for i, x in enumerate(getattr(self.task, "graph_state", list)()):  # one made by the warm-up: zeroed
            x.copy_(saved["task"][i]) if i < len(saved["task"]) else x.zero_()
        torch.set_rng_state(saved["rng"][0])
        torch.cuda.set_rng_state(saved["rng"][1], self.device)

    # ---- reading the accumulators ------------------------------------------------------------------------
    def drain(self, window: dict[str, Any]) -> None:
        """Add every graph's summed loss and stats since the last drain into ``window`` (one host sync: a log
        step), then zero the sums."""
        for sums in [*(g.sums for g in self.graphs.values()), *self._retired]:
            sums.read_into(window)
        self._retired = []
        for k, v in self._eager_sums.items():
            window[k] = window.get(k, 0.0) + float(v)
        self._eager_sums = {}

    def discard(self) -> None:
        """Zero the sums without reading them (no host sync): the steps since the last log step are not logged."""
        for g in self.graphs.values():
            g.sums.reset()
        self._retired = []
        self._eager_sums = {}

    def summary(self) -> dict[str, Any]:
        return {"graphs": len(self.graphs), "captures": self.captures,
                "failed": self.failed or ""}


def _pinned_flat(arrays: dict[str, np.ndarray]) -> torch.Tensor:
    """Every staged array as one int64 host tensor in pinned memory (its copy then never makes the host wait)."""
    flat = np.concatenate([np.asarray(a, np.int64).reshape(-1) for a in arrays.values()]) if arrays else \
        np.zeros(0, np.int64)
    return torch.from_numpy(flat).pin_memory()


def _views(flat: torch.Tensor, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    out, s = {}, 0
    for k, a in arrays.items():
        out[k] = flat[s:s + a.size].view(a.shape)
        s += a.size
    return out
