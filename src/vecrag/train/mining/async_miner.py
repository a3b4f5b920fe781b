"""The asynchronous hard-negative miner: ONE background thread (or, with ``mining.worker: process``, a thread
that hands each job to a child process: :mod:`vecrag.train.mining.process`).

``AsyncMiner`` owns its own search index handle and its own copy of the query tower, refreshed from the
trainer every ``refresh_every`` optimizer steps (the state_dict is copied under a lock; the copy's
version is the step of the weights). It mines the batches the trainer will reach next (the sampler is
deterministic: ``batch_at(epoch, i)``) and keeps the results in a bounded store of whole batches, keyed by
(epoch, first sample id) and handed over only when the batch's sample ids all match (a sample occurs once per
epoch), as one [B, n_neg] array aligned with the trainer's batch (no per-sample Python on the trainer's
side). The trainer takes a result only when it is at most ``ttl`` optimizer steps old and waits at most
``timeout`` seconds for it; otherwise it falls back (sync mining or in-batch negatives only). A miner exception
is logged and counted; a dead or stalled thread is replaced (at most ``max_restarts`` times, then the miner is
disabled and every batch falls back). Nothing here can stop training.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from vecrag.errors import VecragError
from vecrag.train.mining.curriculum import MiningStats, Phase
from vecrag.train.mining.miners import MiningCore, WorkerGone

log = logging.getLogger(__name__)


_FAULT = re.compile(r"^(raise|hang|crash)@(\d+)(?::([0-9.]+))?$")


def parse_faults(spec: str | None) -> dict[int, tuple[str, float]]:
    """``"raise@3,hang@5:2.5"`` -> {3: ("raise", 0), 5: ("hang", 2.5)} (N counts mining jobs from 1).
    ``crash@N`` kills the miner process during job N (``mining.worker: process``; a thread miner raises)."""
    out: dict[int, tuple[str, float]] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        m = _FAULT.match(part)
        if not m or (m.group(1) == "hang" and m.group(3) is None):
            raise VecragError(f"malformed mining fault {part!r}", hint='write "raise@N", "crash@N" or "hang@N:SECONDS"')
        out[int(m.group(2))] = (m.group(1), float(m.group(3) or 0.0))
    return out


@dataclass
class AsyncConfig:
    ttl: int = field(default=20, metadata={"help": "max age (optimizer steps) of the weights a used result was "
                                                   "mined with"})
    timeout: float = field(default=2.0, metadata={"help": "seconds the trainer waits for a result"})
    refresh_every: int = field(default=10, metadata={"help": "optimizer steps between weight copies to the miner "
                                                             "(<= ttl: MiningConfig)"})
    lookahead: int = field(default=8, metadata={"help": "micro-batches mined ahead of the trainer (bounds the result "
                                                        "store)"})
    per_job: int = field(default=4, metadata={"help": "micro-batches mined together in one job (<= lookahead)"})
    stall: float = field(default=60.0, metadata={"help": "a job running longer than this is abandoned and the thread "
                                                         "replaced"})
    max_restarts: int = field(default=3, metadata={"help": "thread replacements after stalls or errors before the "
                                                           "miner is disabled (every batch falls back)"})


class AsyncMiner:
    """ONE background mining thread with its own index handle and tower copy; never fatal."""

    def __init__(self, make_core: Callable[[], MiningCore], tower: torch.nn.Module,
                 batch_at: Callable[[int, int], np.ndarray | None], phase_for: Callable[[int], Phase | None],
                 cfg: AsyncConfig, *, fault: str | None = None, version: int = 0, n_batches: int = 0):
        self.make_core = make_core
        self.n_batches = int(n_batches)  # micro-batches per epoch (0 = do not look past the epoch's end)
        self.batch_at = batch_at
        self.phase_for = phase_for
        self.cfg = cfg
        self.faults = parse_faults(fault)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._tower = copy.deepcopy(tower).cpu().eval()
        self._tower_device: torch.device | None = None  # where the miner's copy lives, once its thread has set up
        self._pending: tuple[dict[str, torch.Tensor], int, torch.cuda.Event | None] | None = None
        self.version = version
        # (epoch, first sample id) -> (sample ids, negatives [B, n_neg], version): whole mined batches
        self._results: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray, int]] = OrderedDict()
        self._done: set[tuple[int, int]] = set()
        self._cursor = (0, 0)
        self._jobs = 0
        self._gen = 0
        self._busy_since: float | None = None
        self._stop = threading.Event()
        self.disabled = False
        self.round_stats = MiningStats()
        self.counters = dict.fromkeys(("hits", "stale", "misses", "fallbacks", "errors", "restarts", "jobs",
                                       "graph_jobs"), 0)
        self.wait_ms = 0.0
        self._thread: threading.Thread | None = None
        self._cores: list = []  # every core opened (a process core is a child process to stop at close)
        self._ready = threading.Event()  # a core is open: until then get() falls back without waiting
        self._min_version = version      # results mined with older weights are never used (see rebase)
        self._last_advance: float | None = None
        self._step_s: float | None = None  # EMA of the trainer's time per position change
        self._job_s: float | None = None   # EMA of one mining job's time

    # ---- trainer side ------------------------------------------------------------------------------
    def start(self) -> None:
        self._gen += 1
        self._busy_since = None
        self._thread = threading.Thread(target=self._run, args=(self._gen,), name=f"vecrag-miner-{self._gen}",
                                        daemon=True)
        self._thread.start()

    def refresh(self, tower: torch.nn.Module, step: int) -> None:
        """Copy the live tower's weights for the miner, tagged with ``step``. Weights on a GPU: clones there and an
        event after them; the miner thread copies them into its tower (a copy to the host here would make the
        trainer wait for its queued kernels once per tensor). Else a host copy."""
        live = tower.state_dict()
        ev = None
        if live and next(iter(live.values())).is_cuda:
            sd = {k: v.detach().clone() for k, v in live.items()}
            ev = torch.cuda.Event()
            ev.record()  # on the trainer's stream, after the clones
        else:
            sd = {k: v.detach().to("cpu", copy=True) for k, v in live.items()}
        with self._lock:
            self._pending = (sd, int(step), ev)

    def rebase(self, tower: torch.nn.Module, step: int) -> None:
        """The trainer's weights jumped (a resume loaded a checkpoint at ``step``): results mined before are
        dropped, even ones still in flight (their version is older), and mining continues with ``tower``."""
        self.refresh(tower, step)
        with self._cond:
            self._results.clear()
            self._done.clear()
            self._min_version = int(step)

    def advance(self, epoch: int, batch: int) -> None:
        """The trainer is at micro-batch ``batch`` of ``epoch``; mine from here on."""
        now = time.monotonic()
        with self._cond:
            if (int(epoch), int(batch)) != self._cursor:
                if self._last_advance is not None:
                    dt = now - self._last_advance
                    self._step_s = dt if self._step_s is None else 0.8 * self._step_s + 0.2 * dt
                self._last_advance = now
            self._cursor = (int(epoch), int(batch))
            self._done = {d for d in self._done if d >= self._cursor}
            self._cond.notify_all()
        self._watchdog()

    def get(self, idx: np.ndarray, step: int, epoch: int) -> np.ndarray | None:
        """Negatives [len(idx), n_neg] for the samples ``idx`` (of ``epoch``: a sample recurs once per epoch),
        row j for sample idx[j], if fresh (mined with weights at most ``ttl`` steps old) and ready within
        ``timeout`` seconds; else None."""
        if self.disabled:
            self.counters["fallbacks"] += 1
            return None
        t0 = time.monotonic()
        # while the miner is still opening its index (seconds for a process or a large bank) waiting is pointless
        deadline = t0 + (self.cfg.timeout if self._ready.is_set() else 0.0)
        idx = np.asarray(idx, np.int64)
        key = (int(epoch), int(idx[0])) if len(idx) else (int(epoch), -1)
        with self._cond:
            while key not in self._results:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    break
                self._cond.wait(timeout=min(left, 0.05))
            got = self._results.pop(key, None)
        self.wait_ms += 1000.0 * (time.monotonic() - t0)
        if got is None or not np.array_equal(got[0], idx):  # keyed by sample ids: all of them must match
            self.counters["misses"] += 1
            self.counters["fallbacks"] += 1
            self._watchdog()
            return None
        if step - got[2] > self.cfg.ttl or got[2] < self._min_version:
            self.counters["stale"] += 1
            self.counters["fallbacks"] += 1
            return None
        self.counters["hits"] += 1
        return got[1]

    def stats(self) -> dict[str, float]:
        with self._lock:
            depth = len(self._results)
        out = {f"miner_{k}": float(v) for k, v in self.counters.items()}
        out["miner_queue_depth"] = float(depth)
        out["miner_wait_ms"] = self.wait_ms
        out["miner_disabled"] = float(self.disabled)
        out["miner_worker_restarts"] = float(sum(getattr(c, "restarts", 0) for c in self._cores))
        out["miner_job_ms"] = 1000.0 * (self._job_s or 0.0)  # EMA of one job (a batch mined), IPC included
        return out

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        for core in self._cores:
            if hasattr(core, "close"):
                core.close()

    # ---- supervision -------------------------------------------------------------------------------
    def _watchdog(self) -> None:
        if self.disabled or self._stop.is_set() or self._thread is None:
            return
        stalled = self._busy_since is not None and time.monotonic() - self._busy_since > self.cfg.stall
        if self._thread.is_alive() and not stalled:
            return
        if self.counters["restarts"] >= self.cfg.max_restarts:
            log.error("async miner %s %d times; disabled, falling back for the rest of the run",
                      "stalled" if stalled else "died", self.counters["restarts"] + 1)
            self.disabled = True
            return
        self.counters["restarts"] += 1
        log.warning("async miner thread %s; starting a fresh one (restart %d)",
                    "stalled" if stalled else "died", self.counters["restarts"])
        self.start()  # the old thread (if stuck) is abandoned: a daemon whose results are ignored

    # ---- miner thread ------------------------------------------------------------------------------
    def _next_job(self) -> tuple[list[tuple[tuple[int, int], np.ndarray]], Phase] | None:
        """Up to ``per_job`` not yet mined micro-batches of one phase inside the look-ahead window, as
        [((epoch, batch), sample ids)] and the phase; None while fewer than ``per_job`` are due (unless the
        trainer's own batch is among them, or the run or the phase ends first). One search for several batches:
        on the H200 at 1M, 3.0 ms of mining a batch with 4 a job, 5.4-6.3 ms with 1 (docs/benchmarks.md)."""
        e, j = self._cursor
        per_job = max(1, min(self.cfg.per_job, self.cfg.lookahead))
        skip = 0
        # a miner slower than training skips ahead to where the trainer will be when the job finishes
        if self._job_s is not None and self._step_s:
            skip = min(self.cfg.lookahead - per_job, int(self._job_s / max(self._step_s, 1e-6)))
        j += skip
        picked: list[tuple[tuple[int, int], np.ndarray]] = []
        phase0: Phase | None = None
        cut = False  # the run or the phase ends inside the window: a short job is all there is
        for _ in range(self.cfg.lookahead - skip):
            if self.n_batches and j >= self.n_batches:
                e, j = e + 1, 0
            pos = (e, j)
            j += 1
            if pos in self._done:
                continue
            phase = self.phase_for(pos[0])
            if phase is None:  # an epoch without mining
                self._done.add(pos)
                if picked:
                    cut = True
                    break
                continue
            if phase0 is not None and phase != phase0:
                cut = True
                break
            idx = self.batch_at(*pos)
            if idx is None or len(idx) == 0:
                cut = True
                break
            picked.append((pos, np.asarray(idx, np.int64)))
            phase0 = phase
            if len(picked) == per_job:
                break
        if not picked:
            return None
        if len(picked) < per_job and not cut and picked[0][0] != self._cursor:
            return None  # wait for the trainer to free the window (its own batch is already mined)
        self._done.update(pos for pos, _ in picked)
        assert phase0 is not None
        return picked, phase0

    def _run(self, gen: int) -> None:
        try:
            core = self.make_core()  # its own index handle (or its own process: vecrag.train.mining.process)
            self._cores.append(core)
            self._tower.to(core.device)  # the copy lives where the core feeds it inputs (cuda when training there)
            self._tower_device = core.device
            stream = None
            if core.device.type == "cuda":
                # its own (non-blocking) CUDA stream: on the shared default stream each .cpu() in this thread
                # would also wait for the trainer's queued kernels, and the trainer's syncs for the miner's
                torch.cuda.synchronize(core.device)  # the bank and tower copies above are on the default stream
                stream = torch.cuda.Stream(core.device)
        except Exception:
            log.exception("async miner could not open its index")
            self.counters["errors"] += 1
            return
        self._ready.set()
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            self._loop(gen, core)

    def _load_pending(self) -> None:
        """Load the weights the trainer last handed over (``refresh``) into the miner's tower. The lock is held
        only to take them: copying them down to a host tower waits for the GPU, and the trainer must not wait on
        the lock meanwhile."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        sd, ver, ev = pending
        if ev is not None and self._tower_device is not None and self._tower_device.type == "cuda":
            cur = torch.cuda.current_stream()  # clones on the GPU: this stream waits (on the GPU) for them
            cur.wait_event(ev)
            self._tower.load_state_dict(sd)
            for v in sd.values():
                v.record_stream(cur)  # their memory is kept until this stream has read them
        elif ev is not None:  # clones on the GPU, the tower copy on the host (a process worker's): wait, copy down
            ev.synchronize()
            self._tower.load_state_dict(sd)
        else:
            self._tower.load_state_dict(sd)
        self.version = ver

    def _loop(self, gen: int, core: MiningCore) -> None:
        while not self._stop.is_set() and gen == self._gen:
            with self._cond:
                job = self._next_job()
                if job is None:
                    self._cond.wait(timeout=0.05)
                    continue
            self._busy_since = time.monotonic()  # the watchdog covers the weights' copy too
            self._load_pending()
            version = self.version
            batches, phase = job
            idx = np.concatenate([b for _, b in batches])
            e, j = batches[0][0]
            try:
                self._jobs += 1
                self.counters["jobs"] += 1
                fault = self.faults.get(self._jobs)
                if fault and fault[0] == "crash" and hasattr(core, "crash"):
                    core.crash()  # the child dies; core.mine below fails and the next job starts a fresh one
                elif fault and fault[0] in ("raise", "crash"):
                    raise RuntimeError(f"injected miner fault at job {self._jobs}")
                if fault and fault[0] == "hang":
                    self._stop.wait(fault[1])
                if hasattr(core, "alive") and not core.alive():  # a miner process died: start a fresh one
                    self._ready.clear()  # (seconds) meanwhile the trainer falls back without waiting
                    self._busy_since = None
                    core.restart()
                    self._ready.set()
                    self._busy_since = time.monotonic()
                t_job = time.monotonic()
                res = core.mine(self._tower, idx, phase, version)
                self.counters["graph_jobs"] += int(res.graphed)  # replayed from a CUDA graph (thread or child)
                dt = time.monotonic() - t_job
                self._job_s = dt if self._job_s is None else 0.8 * self._job_s + 0.2 * dt
            except WorkerGone as err:
                log.error("async miner disabled, falling back for the rest of the run: %s", err)
                self.counters["errors"] += 1
                self.disabled = True
                return
            except Exception:
                log.exception("async miner failed on epoch %d batch %d (counted; training continues)", e, j)
                self.counters["errors"] += 1
                continue
            finally:
                if gen == self._gen:
                    self._busy_since = None
            if gen != self._gen:
                return
            with self._cond:
                s = 0
                for (be, _), b in batches:  # one result per micro-batch, in order
                    key = (be, int(b[0]))
                    self._results[key] = (res.ids[s:s + len(b)], res.neg[s:s + len(b)], res.version)
                    self._results.move_to_end(key)
                    s += len(b)
                while len(self._results) > self.cfg.lookahead + 1:  # bounded: the oldest batch goes
                    self._results.popitem(last=False)
                self.round_stats.merge(res.stats)
                self._cond.notify_all()
