"""Where a retriever batch's hard negatives come from, chosen once per task by :func:`build_negatives` from
``mining.mode``: none (in-batch and queue negatives only), sync (mined in the training step, bit-exact on
resume) or async (mined ahead by a thread or a separate process, with the sync miner as the fallback when
``mining.fallback=sync``).

Every source answers ``get(idx, step, epoch, phase, queries)`` with negative ids [len(idx), n_neg] (-1 padded)
or None, and keeps the task's mining counters and round statistics.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from vecrag.train.mining.async_miner import AsyncConfig, AsyncMiner
from vecrag.train.mining.curriculum import MiningStats, Phase
from vecrag.train.mining.miners import SyncMiner
from vecrag.train.retriever_config import MiningMode, Worker


class NoNegatives:
    """``mining.mode=none``: no mined negatives."""

    mode = MiningMode.NONE

    def __init__(self, task: Any):
        self.task = task

    def start(self, step: int) -> None:
        """Nothing to start."""

    def get(self, idx: np.ndarray, step: int, epoch: int, phase: Phase,
            queries: Any = None) -> np.ndarray | None:
        return None

    def take_round(self) -> MiningStats:
        """This source's mining statistics since the last call (the task logs them once per epoch)."""
        return MiningStats()

    def rebase(self, step: int) -> None:
        """The weights (and step) just changed under the source (a resume)."""

    def stats(self) -> dict[str, float]:
        return {}

    def close(self) -> None:
        """Nothing to stop."""


class SyncNegatives(NoNegatives):
    """``mining.mode=sync``: the step's own samples mined with the current tower (a pure function of the
    weights, so a resumed run is bit-exact)."""

    mode = MiningMode.SYNC

    def __init__(self, task: Any):
        super().__init__(task)
        self.miner: SyncMiner | None = None  # built on first use (it opens the bank's search index)

    def get(self, idx: np.ndarray, step: int, epoch: int, phase: Phase,
            queries: Any = None) -> np.ndarray | None:
        t = self.task
        if self.miner is None:
            self.miner = SyncMiner(t._core())
        res = self.miner.mine(t.model.query, idx, phase, step, queries)
        t.round.merge(res.stats)
        t.counters["mined_sync"] += 1
        t.counters["mined_sync_graph"] += int(res.graphed)  # replayed from a CUDA graph
        return res.neg


class AsyncNegatives(SyncNegatives):
    """``mining.mode=async``: batches mined ahead by an :class:`AsyncMiner` (a thread, or a separate process
    with ``mining.worker=process``), refreshed with the tower's weights every ``mining.refresh_every`` steps; a
    batch not ready in time falls back to in-batch negatives or to the sync miner (``mining.fallback``)."""

    mode = MiningMode.ASYNC

    def __init__(self, task: Any):
        super().__init__(task)
        self.async_miner: AsyncMiner | None = None
        self.refreshed = -1

    def start(self, step: int) -> None:
        """Start the miner now: it opens its index (or process) while the first epochs run."""
        if self.async_miner is not None:
            return
        t = self.task
        m, tr = t.cfg.mining, t.trainer
        n_batches = tr.n_batches if tr is not None else 0
        last_epoch = t.cfg.train.epochs - 1

        def batch_at(e: int, i: int) -> np.ndarray | None:
            if tr is None or e > last_epoch or i >= n_batches:
                return None
            return tr.batch_at(e, i)

        acfg = AsyncConfig(ttl=m.ttl, timeout=m.timeout, refresh_every=m.refresh_every, lookahead=m.lookahead,
                           per_job=m.per_job, stall=m.stall, max_restarts=m.max_restarts)
        make_core: Any = functools.partial(t._core, thread=True)
        if Worker(m.worker) is Worker.PROCESS:  # no GIL shared with the trainer (vecrag.train.mining.process)
            from vecrag.train.mining.process import ProcessCore, spec_for

            spec = spec_for(t)

            def make_core() -> ProcessCore:
                return ProcessCore(spec, stall=m.stall, max_restarts=m.max_restarts)

        self.async_miner = AsyncMiner(make_core, t.model.query, batch_at, t.curriculum.phase_for, acfg,
                                      fault=m.fault or None, version=step, n_batches=n_batches)
        self.refreshed = step
        self.async_miner.start()

    def get(self, idx: np.ndarray, step: int, epoch: int, phase: Phase,
            queries: Any = None) -> np.ndarray | None:
        t, m = self.task, self.task.cfg.mining
        self.start(step)
        assert self.async_miner is not None
        if step - self.refreshed >= m.refresh_every:
            self.async_miner.refresh(t.model.query, step)
            self.refreshed = step
        self.async_miner.advance(epoch, t.trainer.batch if t.trainer is not None else 0)
        got = self.async_miner.get(idx, step, epoch)
        if got is not None:
            t.counters["mined_async"] += 1
            return got
        if m.fallback == "inbatch":
            t.counters["fallback_inbatch"] += 1
            return None
        return super().get(idx, step, epoch, phase, queries)

    def take_round(self) -> MiningStats:
        if self.async_miner is None:
            return MiningStats()
        with self.async_miner._lock:
            st, self.async_miner.round_stats = self.async_miner.round_stats, MiningStats()
        return st

    def rebase(self, step: int) -> None:
        if self.async_miner is not None:
            self.async_miner.rebase(self.task.model.query, step)
            self.refreshed = step

    def stats(self) -> dict[str, float]:
        return self.async_miner.stats() if self.async_miner is not None else {}

    def close(self) -> None:
        if self.async_miner is not None:
            self.async_miner.close()  # kept (stopped) so that stats() still reports its counters


SOURCES: dict[MiningMode, type[NoNegatives]] = {MiningMode.NONE: NoNegatives, MiningMode.SYNC: SyncNegatives,
                                                MiningMode.ASYNC: AsyncNegatives}


def build_negatives(task: Any) -> NoNegatives:
    """The negative source of ``task.cfg.mining.mode`` (built once, when the task is)."""
    return SOURCES[MiningMode(task.cfg.mining.mode)](task)
