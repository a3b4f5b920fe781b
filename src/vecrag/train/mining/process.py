"""The async miner's work in a child process (``mining.worker: process``): no GIL shared with the trainer.

A mining thread in the training process competes with the trainer for the GIL. Every torch op releases and
re-takes it, so whenever the miner thread holds it (numpy gathers, argsort, the selection's Python) the trainer
waits, up to the interpreter's 5 ms switch interval, once per op. ``ProcessCore`` keeps the miner thread (it
schedules jobs and keeps the result store, both light) and moves :meth:`MiningCore.mine` into a spawned child
that opens the bank itself, builds its own search handle and query tower, and receives the tower's weights
whenever their version changes, through one shared-memory buffer (:func:`write_weights` / :func:`read_weights`: a
memory copy each side and a message of a few bytes; pickling the state dict through the pipe took tens of ms a
refresh for the 5M-parameter transformer tower and dragged async at 1M on the H200 to 71 % of no mining,
docs/bugs-and-fixes.md).

One request is in flight at a time over a Pipe (bounded by construction). The thread waits at most ``stall``
seconds for a reply, then kills the child and raises; the miner counts that as an error and the next job starts
a fresh child, at most ``max_restarts`` times (then every job raises and training falls back). A child whose
parent died exits on its own within a second. Costs: one more CUDA context on the training GPU (~0.5 GB) and
its own copy of the bank there (what the miner thread already held), a start-up of a few seconds (imports,
bank copy and, on a GPU, one warm-up job of the first mining phase's shape, so that the first real jobs find
their kernels loaded and their CUDA graph captured) during which the trainer falls back without waiting.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import signal
import traceback
from dataclasses import dataclass

import numpy as np
import torch

from vecrag.errors import VecragError
from vecrag.train.mining.curriculum import Phase
from vecrag.train.mining.miners import WorkerGone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoreSpec:
    """Everything a child needs to rebuild the trainer's MiningCore (plain values: it is pickled)."""

    bank: str
    min_context: int
    context: int
    window: int
    dup_eps: float
    rel: float
    dup: float
    k: int
    backend: str
    device: str          # where the child searches and runs its tower ("cuda:0", "cpu")
    dim: int
    tower: dict          # TowerConfig fields
    threads: int = 1
    keep_back: bool = False
    cuda_graph: bool = True
    # (queries, phase) of one job the child mines before it reports "ready": the first jobs' cold start (kernels,
    # cuBLAS, the CUDA graph's capture) then falls in the start-up, when the trainer does not wait for the miner
    warmup: tuple[int, Phase] | None = None


def build_core(spec: CoreSpec):
    """The MiningCore (and an untrained query tower) a spec describes; used in the child."""
    from vecrag.bank.sequences import make_samples
    from vecrag.bank.store import Bank
    from vecrag.config import from_dict
    from vecrag.models.towers import QueryTower, TowerConfig
    from vecrag.train.losses import ChunkMeta, NegativeMasker
    from vecrag.train.mining.curriculum import FilterConfig
    from vecrag.train.mining.miners import MiningCore, make_searcher

    bank = Bank.open(spec.bank)
    samples = make_samples(bank, "train", min_context=spec.min_context)
    masker = NegativeMasker(ChunkMeta.from_bank(bank), window=spec.window, dup_eps=spec.dup_eps)
    where = spec.device if spec.device.startswith("cuda") else "cpu"
    core = MiningCore(bank.vectors, samples, spec.context, masker, FilterConfig(spec.rel, spec.dup, spec.keep_back),
                      spec.k, make_searcher(bank, spec.backend, where), spec.device, cuda_graph=spec.cuda_graph)
    tower = QueryTower(spec.dim, from_dict(TowerConfig, spec.tower)).to(core.device).eval()
    return core, tower


def state_numel(module: torch.nn.Module) -> int:
    """Elements of a module's state dict (every entry float32: checked)."""
    sd = module.state_dict()
    bad = sorted(k for k, v in sd.items() if v.dtype != torch.float32)
    if bad:
        raise VecragError(f"the miner process shares float32 weights only; {', '.join(bad)} are not",
                          hint="use mining.worker=thread")
    return sum(v.numel() for v in sd.values())


def write_weights(flat: torch.Tensor, module: torch.nn.Module) -> None:
    """Copy a module's state, in state-dict order, into the float32 buffer ``flat`` (a CPU module)."""
    parts = [v.reshape(-1) for v in module.state_dict().values()]
    if sum(p.numel() for p in parts) != flat.numel():
        raise ValueError(f"the tower has {sum(p.numel() for p in parts)} weights, the shared buffer {flat.numel()}")
    torch.cat(parts, out=flat)


@torch.no_grad()
def read_weights(flat: torch.Tensor, module: torch.nn.Module) -> None:
    """Load a module's state from ``flat`` (written by :func:`write_weights` from a module of the same config)."""
    off = 0
    for v in module.state_dict().values():  # detached views of the parameters: copy_ updates them in place
        v.copy_(flat[off:off + v.numel()].view_as(v))
        off += v.numel()


def _child(conn, spec: CoreSpec, box: torch.Tensor) -> None:  # pragma: no cover - runs in the spawned process
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's; it stops this process
    from vecrag.runtime import set_threads

    set_threads(spec.threads)
    try:
        core, tower = build_core(spec)
        if spec.warmup is not None:  # the same shape and tower object as the first jobs: their graph is captured
            n, phase = spec.warmup
            core.mine(tower, np.arange(min(n, len(core.samples))), phase, -1)
    except Exception:
        conn.send(("err", traceback.format_exc()))
        return
    conn.send(("ready", None))
    parent = mp.parent_process()
    while True:
        if not conn.poll(1.0):
            if parent is not None and not parent.is_alive():
                return
            continue
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        if msg[0] == "weights":  # the parent wrote them to ``box`` and waits for a reply before writing again
            read_weights(box, tower)
            continue
        _, idx, phase, version, crash = msg
        if crash:  # fault injection: die in the middle of a job, as a segfault or an OOM kill would
            import os

            os._exit(3)
        try:
            conn.send(("ok", core.mine(tower, idx, phase, version)))
        except Exception:
            conn.send(("err", traceback.format_exc()))


class ProcessCore:
    """Stands in for a MiningCore in the AsyncMiner's thread and mines in a child process."""

    device = torch.device("cpu")  # the thread's tower copy stays on the host: only its weights travel

    def __init__(self, spec: CoreSpec, *, stall: float = 60.0, max_restarts: int = 3, start_timeout: float = 300.0):
        self.spec = spec
        self.stall = float(stall)
        self.max_restarts = int(max_restarts)
        self.start_timeout = float(start_timeout)
        self.restarts = 0
        self.proc = None
        self.conn = None
        self._sent: int | None = None  # version of the weights the child holds
        self._crash = False            # fault injection: the next job kills the child
        from vecrag.config import from_dict
        from vecrag.models.towers import QueryTower, TowerConfig

        # the weights' mailbox, shared with every child this core starts (sized from a tower of the spec's config)
        n = state_numel(QueryTower(spec.dim, from_dict(TowerConfig, spec.tower)))
        self.box = torch.empty(n, dtype=torch.float32).share_memory_()
        self._spawn()

    def _spawn(self) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that may hold a CUDA context
        here, there = ctx.Pipe()
        self.proc = ctx.Process(target=_child, args=(there, self.spec, self.box), name="vecrag-miner", daemon=True)
        self.proc.start()
        there.close()
        self.conn, self._sent = here, None
        if not here.poll(self.start_timeout):
            self._kill()
            raise VecragError(f"the miner process did not start within {self.start_timeout:.0f} s",
                              hint="check the bank and device, or use mining.worker=thread")
        try:
            kind, payload = here.recv()
        except EOFError:
            self.proc.join(5.0)
            kind, payload = "err", f"it exited with code {self.proc.exitcode} before opening the bank"
        if kind != "ready":
            self._kill()
            raise VecragError(f"the miner process failed to start on the bank {self.spec.bank}:\n{payload}",
                              hint="the error above says why; mining.worker=thread mines in the training process")

    def _kill(self) -> None:
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5.0)
        if self.conn is not None:
            self.conn.close()
        self.conn = None

    def crash(self) -> None:
        """Fault injection: the child dies in the middle of the next job."""
        self._crash = True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive() and self.conn is not None

    def restart(self) -> None:
        """A fresh child for one that died or was killed (at most ``max_restarts`` times, then WorkerGone)."""
        if self.restarts >= self.max_restarts:
            raise WorkerGone(f"the miner process died {self.restarts + 1} times; not restarting it "
                             f"(mining.max_restarts = {self.max_restarts})")
        self.restarts += 1
        log.warning("miner process gone (exit code %s); starting a fresh one (restart %d)",
                    None if self.proc is None else self.proc.exitcode, self.restarts)
        self._kill()
        self._spawn()

    def mine(self, tower: torch.nn.Module, idx: np.ndarray, phase, version: int = 0):
        if not self.alive():  # the AsyncMiner's loop restarts a dead child (restart()) before each job
            raise RuntimeError("the miner process is not running; restart() starts a fresh one")
        try:
            if self._sent != version:  # safe to write: the child answered the last job, so it read the last weights
                write_weights(self.box, tower)
                self.conn.send(("weights",))
                self._sent = version
            self.conn.send(("mine", np.asarray(idx, np.int64), phase, int(version), self._crash))
            self._crash = False
            if not self.conn.poll(self.stall):
                self._kill()
                raise TimeoutError(f"the miner process gave no answer in {self.stall:.0f} s (mining.stall); "
                                   "killed, a fresh one starts with the next job")
            kind, payload = self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError) as e:
            self._kill()
            raise RuntimeError(f"the miner process died (exit code {self.proc.exitcode}): {e!r}") from e
        if kind != "ok":
            raise RuntimeError(f"the miner process failed:\n{payload}")
        return payload

    def close(self) -> None:
        if self.conn is not None and self.proc is not None and self.proc.is_alive():
            try:
                self.conn.send(("stop",))
                self.proc.join(5.0)
            except OSError:
                pass
        self._kill()


def spec_for(task) -> CoreSpec:
    """The CoreSpec of a RetrieverTask's mining (its bank, samples, masks, filters and tower config)."""
    c = task.cfg
    return CoreSpec(bank=str(task.bank.path), min_context=c.min_context, context=task.L, window=c.loss.window,
                    dup_eps=c.loss.dup_eps, rel=c.mining.rel, dup=c.mining.dup, keep_back=c.mining.keep_back,
                    k=c.mining.k, backend=c.mining.backend, cuda_graph=c.mining.graphs_for(thread=False),
                    device=str(task.device), dim=task.bank.dim,
                    tower=dataclasses.asdict(c.model),
                    warmup=next(((c.train.batch_size * c.mining.per_job, p) for p in task.curriculum.phases
                                 if p.n_neg > 0), None) if task.device.type == "cuda" else None,
                    # on a GPU the child's CPU work is light: 2 threads leave the cores to the trainer (1, 4 and
                    # 16 measured the same on the H200 within noise); on the CPU it searches: the trainer's count
                    threads=2 if task.device.type == "cuda" else max(1, torch.get_num_threads()))
