"""Data-parallel training on PyTorch's own stack: ``torchrun`` + ``torch.distributed`` + DDP (docs/distributed.md).

Everything here is a no-op for a plain single-process run (``WORLD_SIZE`` unset or 1), so the trainers
behave exactly as before. Under ``torchrun --nproc_per_node N``:

- :func:`init_from_env` joins the process group that torchrun describes in ``RANK`` / ``WORLD_SIZE`` /
  ``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` (backend ``nccl`` on CUDA, ``gloo`` otherwise;
  ``VECRAG_DIST_BACKEND`` overrides; every collective times out after ``VECRAG_DIST_TIMEOUT_S``, default
  1800 s);
- :func:`shard` cuts a global micro-batch into per-rank disjoint contiguous slices;
- :func:`gather_with_grad` all-gathers rows (e.g. in-batch positives) so each rank's queries score against
  every rank's rows; the backward all-reduces the gathered gradient and returns this rank's slice, i.e. the
  local shard receives the gradient of EVERY rank's loss with respect to it (``torch.distributed.nn``'s
  semantics). Replacing only the local slot of a plain all-gather with the local tensor would drop the
  other ranks' contributions and differ from the single-process gradient when each rank computes only its
  own queries' rows;
- :class:`StepModule` lets DDP wrap a task whose loss calls several sub-modules (``model.query``,
  ``model.doc``): DDP's bookkeeping needs the computation to run inside ``ddp_module(...)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 1800.0


# ---- who am I -------------------------------------------------------------------------------------------
def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (torchrun's ``RANK`` also after :func:`cleanup`; 0 for a plain run)."""
    if is_distributed():
        return dist.get_rank()
    return _env_int("RANK", 0) if _env_int("WORLD_SIZE", 1) > 1 else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Rank 0 (the only process that writes checkpoints, logs, TensorBoard and the progress bar)."""
    return rank() == 0


def timeout_s() -> float:
    try:
        return float(os.environ.get("VECRAG_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def default_threads() -> int | None:
    """Torch threads per process when the config says 0 (all cores): the cores shared by the processes of
    this node under torchrun, ``None`` (= all cores) for a plain run."""
    local = _env_int("LOCAL_WORLD_SIZE", 1)
    if _env_int("WORLD_SIZE", 1) <= 1 or local <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // local)


# ---- process group --------------------------------------------------------------------------------------
def init_from_env(device_type: str | None = None) -> bool:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (idempotent); returns whether distributed."""
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    if not dist.is_available():
        from vecrag.errors import VecragError

        raise VecragError("WORLD_SIZE > 1 but this torch build has no torch.distributed",
                          hint="run without torchrun, or install a torch build with distributed support")
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    backend = os.environ.get("VECRAG_DIST_BACKEND") or ("nccl" if device_type == "cuda" else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    log.info("distributed: rank %d of %d (local rank %d), backend %s", dist.get_rank(), dist.get_world_size(),
             local_rank(), backend)
    return is_distributed()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(timeout: float | None = None) -> None:
    """Wait for every rank, at most ``timeout`` seconds (default ``VECRAG_DIST_TIMEOUT_S``). On gloo a
    monitored barrier names the ranks that did not arrive; on NCCL the process group's timeout applies."""
    if not is_distributed():
        return
    if dist.get_backend() == "gloo":
        dist.monitored_barrier(timeout=timedelta(seconds=timeout or timeout_s()), wait_all_ranks=True)
    else:
        dist.barrier(device_ids=[torch.cuda.current_device()] if dist.get_backend() == "nccl" else None)


def comm_device() -> torch.device:
    """Where small bookkeeping tensors must live for the backend's collectives."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects; a no-op for a plain run)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


# ---- the sampler's split --------------------------------------------------------------------------------
def shard_sizes(n: int, world: int) -> list[int]:
    """Rows of a global micro-batch of ``n`` rows per rank: equal, the first ``n % world`` ranks get one more."""
    return [n // world + (1 if r < n % world else 0) for r in range(world)]


def shard(batch: np.ndarray, r: int, world: int) -> np.ndarray:
    """Rank ``r``'s disjoint contiguous slice of a global micro-batch (the whole batch when ``world`` = 1)."""
    if world == 1:
        return batch
    sizes = shard_sizes(len(batch), world)
    start = sum(sizes[:r])
    return batch[start:start + sizes[r]]


# ---- gathers ----------------------------------------------------------------------------------------------
def gather_sizes(n: int) -> list[int]:
    """Every rank's row count (one tiny all-gather)."""
    if not is_distributed():
        return [int(n)]
    t = torch.tensor([int(n)], dtype=torch.int64, device=comm_device())
    out = [torch.zeros_like(t) for _ in range(world_size())]
    dist.all_gather(out, t)
    return [int(x.item()) for x in out]


def _gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    m = max(sizes)
    buf = x.new_zeros((m, *x.shape[1:]))
    buf[:x.shape[0]] = x
    parts = [torch.empty_like(buf) for _ in sizes]
    dist.all_gather(parts, buf.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def gather_rows(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """All ranks' rows of ``x`` concatenated in rank order, without gradient (``x`` itself when not distributed)."""
    if not is_distributed():
        return x
    sizes = sizes or gather_sizes(x.shape[0])
    with torch.no_grad():
        return _gather_padded(x.detach(), sizes)


def gather_ids(ids: np.ndarray, sizes: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """All ranks' int64 ids in rank order and the per-rank sizes (``(ids, [len(ids)])`` when not distributed)."""
    ids = np.asarray(ids, np.int64)
    if not is_distributed():
        return ids, [len(ids)]
    sizes = sizes or gather_sizes(len(ids))
    got = gather_rows(torch.from_numpy(ids).to(comm_device()), sizes)
    return got.cpu().numpy(), sizes


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return _gather_padded(x, list(sizes))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM)  # every rank's loss gradient w.r.t. every gathered row
        start = sum(ctx.sizes[:ctx.rank])
        return g[start:start + ctx.sizes[ctx.rank]], None


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """All ranks' rows of ``x`` in rank order; gradients flow back to this rank's rows (summed over every rank's
    use of them). ``x`` itself when not distributed. Rank ``r``'s rows start at ``sum(sizes[:r])``."""
    if not is_distributed():
        return x
    sizes = sizes or gather_sizes(x.shape[0])
    if not x.requires_grad:
        return gather_rows(x, sizes)
    return _GatherWithGrad.apply(x, tuple(sizes))


def offset(sizes: list[int]) -> int:
    """Index of this rank's first row in a gathered batch."""
    return sum(sizes[:rank()]) if is_distributed() else 0


# ---- DDP ------------------------------------------------------------------------------------------------
class StepModule(nn.Module):
    """Holds the task's model so that DDP sees its parameters; ``forward(fn, *args)`` runs ``fn(*args)`` (the
    task's loss, which calls the model's sub-modules) inside DDP's forward, as DDP's reducer requires."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """DDP around :class:`StepModule` (``device_ids`` only for CUDA). ``VECRAG_DDP_FIND_UNUSED=1`` turns on
    ``find_unused_parameters`` for models with parameters that a step does not use."""
    find_unused = os.environ.get("VECRAG_DDP_FIND_UNUSED", "0") not in ("0", "", "false")
    return nn.parallel.DistributedDataParallel(
        StepModule(model), device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused)


def rank_seed(seed: int, r: int, step: int) -> int:
    """The seed of rank ``r`` > 0 when it starts (``step`` 0: ``seed + r``) or resumes at ``step``."""
    return seed + r + 1_000_003 * step
