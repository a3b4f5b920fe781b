"""The GPU miner's device work as CUDA graphs: one launch a job instead of ~250.

A mining job on the GPU (:meth:`vecrag.train.mining.miners.MiningCore._select`: gather the context rows, run the query
tower, search the bank, score, mask, filter, pack) is a few hundred small kernels whose shapes depend only on the
job size and the curriculum phase. Launched one by one from Python they cost milliseconds of host time a job: for
sync mining that is the trainer's own time, for a miner process a longer hold on the GPU. :class:`MiningGraphs`
captures the work once per shape and replays it: the host side of a job becomes three small copies in, one replay
and one copy out. On an H200 (docs/benchmarks.md) sync mining went from 62 to 81 % of the no-mining
rate and a miner process from 89-91 to 90-100 %; a miner THREAD beside the trainer was slower with graphs (86-87 vs
91-93 %), so ``mining.cuda_graph: auto`` leaves a thread's jobs eager.

The graph reads the tower's parameters where they were at capture: weight refreshes must copy into them in place
(``load_state_dict`` and the optimizer do); a tower whose parameters moved (``.to()``, a new tower at a reused
``id``) no longer matches the graph's guard (the parameters' addresses) and is captured again. Inputs are copied
into static tensors before each replay, and the packed output is read by the caller before the next replay. Capture
runs in ``thread_local`` mode, so other threads keep launching CUDA work meanwhile, with one exception: torch marks
the device's default random generator as capturing, and a random op of another thread (dropout) raises until the
capture ends (measured, docs/bugs-and-fixes.md), hence the config refuses ``cuda_graph=on`` for a miner thread
beside a tower with dropout. Anything that cannot be captured (a host sync in a custom tower, an old driver) makes
the miner log one warning, frees the generator (:func:`release_rng`) and mine eagerly from then on: the results are
the same.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    out: torch.Tensor
    guard: Hashable


class MiningGraphs:
    """CUDA graphs of a function of a few integer arrays, one per key (at most ``max_graphs``, least recently used
    dropped). All graphs share one memory pool: safe in any replay order because they are replayed one at a time,
    from one thread, and none reads another's output (pytorch/pytorch PR #166975 documents this use). The static
    inputs live outside the pool; each output is read before the next replay, which may reuse its memory."""

    def __init__(self, max_graphs: int = 4, warmup: int = 2):
        self.max_graphs = int(max_graphs)
        self.warmup = int(warmup)
        self._graphs: OrderedDict[Hashable, _Captured] = OrderedDict()
        self._pool = None
        self.failed: str | None = None   # why capture failed (then every job runs eagerly)
        self.captures = 0
        self.replays = 0

    def run(self, key: Hashable, fn: Callable[..., torch.Tensor], inputs: Sequence[np.ndarray],
            device: torch.device | str, guard: Hashable = None) -> torch.Tensor | None:
        """``fn(*tensors)`` for ``inputs`` copied to ``device`` (a GPU), replayed from the graph captured for ``key``
        (captured now if new). ``guard``: what the graph reads besides its inputs, e.g. the addresses of the
        tower's parameters; a graph captured under another guard is captured again (a tower moved or rebuilt).
        The returned tensor is the graph's static output: read it before the next call. None when graphs cannot
        be used (the caller runs ``fn`` eagerly)."""
        if self.failed is not None:
            return None
        dev = torch.device(device)
        with torch.cuda.device(dev):  # capture and replay on the work's GPU, whichever is current
            cap = self._graphs.get(key)
            if cap is not None and cap.guard != guard:
                del self._graphs[key]
                cap = None
            if cap is None:
                cap = self._capture(fn, inputs, dev, guard)
                if cap is None:
                    return None
                self._graphs[key] = cap
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            for static, a in zip(cap.inputs, inputs, strict=True):
                static.copy_(torch.from_numpy(np.ascontiguousarray(a)), non_blocking=True)
            cap.graph.replay()
        self.replays += 1
        return cap.out

    def _capture(self, fn: Callable[..., torch.Tensor], inputs: Sequence[np.ndarray],
                 dev: torch.device, guard: Hashable) -> _Captured | None:
        try:
            static = [torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in inputs]
            side = torch.cuda.Stream(dev)  # warm-up (lazy inits: cuBLAS handles, cached metadata) off the stream
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    fn(*static)
            torch.cuda.current_stream(dev).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = fn(*static)
            self._pool = graph.pool()
        except Exception as err:  # noqa: BLE001 -- any capture failure means: mine eagerly
            self.failed = f"{type(err).__name__}: {err}"
            self._graphs.clear()
            release_rng(dev)
            log.warning("mining runs without CUDA graphs (capture failed: %s); the negatives are the same, the "
                        "miner's host side is slower", self.failed)
            return None
        self.captures += 1
        return _Captured(graph, static, out, guard)


def release_rng(dev: torch.device) -> None:
    """Free ``dev``'s default CUDA generator from a capture that failed.

    Every capture registers the device's default generator (torch marks it "capturing"), and only a capture that
    ENDS cleanly unmarks it: after a failed one, every random op on the device (dropout, ``randn``) raises "Offset
    increment outside graph capture encountered unexpectedly" for the rest of the process (found by the CUDA tests
    in a CUDA test). The generator gets a copy of its own state (same seed and offset) that no graph holds."""
    gen = torch.cuda.default_generators[dev.index if dev.index is not None else torch.cuda.current_device()]
    if hasattr(gen, "clone_state"):  # torch >= 2.4 (graph-safe generator states); older ones keep no such mark
        gen.graphsafe_set_state(gen.clone_state())
