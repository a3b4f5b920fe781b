"""Hard-negative mining: the search handle, the mining core and the synchronous miner.

``MiningCore`` searches the FULL bank with the current query tower, takes the top ``k`` candidates, removes
masked ones (the positive, its text/vector duplicates, same-article chunks within +-window, the sample's own
context chunks, which the evaluation's hit rules also exclude), applies the positive-aware filters and the
phase's cosine band (:func:`vecrag.train.mining.curriculum.pack_selection`) and returns the negative chunk ids of
each sample, keyed by sample id (the index of the training sample), never by batch position. With a resident
searcher every step of that stays on the searcher's device until one host copy of the selected ids; on a GPU
that device work is replayed from a CUDA graph (:mod:`vecrag.train.mining.graph`, ``mining.cuda_graph``).

``SyncMiner`` mines in the training step with the live tower (deterministic: exact resume holds). The
asynchronous miner (a background thread, or a process) is :mod:`vecrag.train.mining.async_miner`.

FAISS is never used inside DataLoader workers (there are none: data is in memory). Thread counts are set
once per process by :func:`vecrag.runtime.set_threads`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch

from vecrag.bank.sequences import Samples, before_target
from vecrag.errors import VecragError
from vecrag.runtime import to_device
from vecrag.train.losses import NegativeMasker
from vecrag.train.mining.curriculum import FilterConfig, MiningStats, Phase, pack_selection, unpack_selection
from vecrag.train.mining.graph import MiningGraphs

log = logging.getLogger(__name__)


def make_searcher(bank, backend: str = "torch", device: str = "cpu", vectors=None):
    """A fresh search handle over the FULL bank: ``torch`` (exact matmul top-k), ``faiss`` (the bank's saved
    index, else an exact in-memory IndexFlatIP) or ``auto`` (saved index if any, else torch). ``vectors``: the
    bank as a tensor already on ``device`` for a torch searcher to share instead of copying (a handle of its
    own over read-only memory: safe from any thread), or a function returning one (called only for torch)."""
    from vecrag.index.load import _manifest_index, load_index, open_index
    from vecrag.index.search import FaissIndex

    if backend == "torch" or (backend == "auto" and _manifest_index(bank) is None):
        return open_index(bank, "torch", device, vectors=vectors)
    if backend not in ("faiss", "auto"):
        raise VecragError(f"unknown mining backend {backend!r}", hint="mining.backend: torch, faiss or auto")
    if _manifest_index(bank) is not None:
        return load_index(bank, device="cpu")
    import faiss

    flat = faiss.IndexFlatIP(bank.dim)
    for s in range(0, bank.n, 1 << 18):
        flat.add(np.ascontiguousarray(bank.vectors[s:s + (1 << 18)], dtype=np.float32))
    return FaissIndex(flat, "flat", device="cpu")


class WorkerGone(RuntimeError):
    """A mining worker that will not come back (a process core past its restarts): the miner disables itself."""


@dataclass
class MineResult:
    ids: np.ndarray        # int64 [B]: the sample ids mined, in order
    neg: np.ndarray        # int64 [B, n_neg]: row j = sample ids[j]'s negatives (-1 padded)
    stats: MiningStats
    version: int           # optimizer step of the tower weights used
    graphed: bool = False  # replayed from a CUDA graph (vecrag.train.mining.graph)

    @property
    def negatives(self) -> dict[int, np.ndarray]:
        """sample id -> its negatives."""
        return {int(s): self.neg[j] for j, s in enumerate(self.ids)}


class MiningCore:
    """Encode contexts with a tower, search, mask, filter. Stateless apart from its search handle."""

    def __init__(self, vectors: np.ndarray, samples: Samples, context: int, masker: NegativeMasker,
                 filters: FilterConfig, k: int, searcher, device: str | torch.device = "cpu",
                 cuda_graph: bool = True):
        self.vectors = vectors
        self.samples = samples
        self.L = int(context)
        self.masker = masker
        self.filters = filters
        self.k = int(k)
        self.searcher = searcher
        self.device = torch.device(device)
        self.use_resident: bool | None = None  # None = auto (see _resident)
        # on a GPU with a resident searcher: the device work replayed from CUDA graphs (vecrag.train.mining.graph)
        self.graphs = MiningGraphs() if cuda_graph else None

    @property
    def n_candidates(self) -> int:
        """Candidates searched a query: ``k`` plus the context length (the context's own chunks are masked)."""
        return min(self.k + self.L, len(self.vectors))

    def _resident(self) -> bool:
        """Read bank rows from the searcher's resident copy (``gather``)? Default: whenever it has one."""
        if not getattr(self.searcher, "is_resident", False):
            return False
        # default: yes, on a GPU and on the host (a 2-core CPU mined a 256-query batch of a 100k bank in 37 ms
        # from the resident fp32 copy vs 55 ms reading the memory map: benchmarks/mining_step.py)
        return self.use_resident if self.use_resident is not None else True

    def mine(self, tower: torch.nn.Module, idx: np.ndarray, phase: Phase, version: int = 0,
             queries: torch.Tensor | None = None) -> MineResult:
        """Negatives for the samples ``idx``. ``queries``: the samples' query vectors when the caller has them
        already (the sync miner on a CPU, from the training step's own forward): the tower is then not run."""
        # sync mining is called inside the trainer's bf16 autocast region: without this the tower and the scores
        # would run in bf16, whose rounding blurs the cosine bands and the duplicate test (cos >= 1 - 1e-6)
        no_amp = (torch.autocast(self.device.type, enabled=False) if self.device.type in ("cuda", "cpu")
                  else contextlib.nullcontext())  # amp "auto" is bf16 on cuda only (loop.py); cpu for amp=bf16
        with torch.no_grad(), no_amp:
            return self._mine(tower, idx, phase, version, queries)

    def _rows(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 bank rows of ``ids`` (all >= 0): from the searcher's resident copy (on its GPU), else read
        from the memory-mapped bank on the host."""
        if self._resident():
            return self.searcher.gather(ids)
        return torch.from_numpy(np.asarray(self.vectors[ids.numpy()], np.float32))

    def _mine(self, tower: torch.nn.Module, idx: np.ndarray, phase: Phase, version: int,
              queries: torch.Tensor | None = None) -> MineResult:
        # Everything runs where the bank rows are: on the GPU with a resident searcher (one host copy at the end:
        # the miner's per-step syncs and numpy work were most of a mining step on the H200,
        # docs/bugs-and-fixes.md), else on the host. On a GPU the device work is replayed from a CUDA graph.
        idx = np.asarray(idx, np.int64)
        host = (self.samples.context_ids(self.L, idx), self.samples.target[idx], self.samples.start[idx])
        packed = None
        if (queries is None and self.graphs is not None and self._resident()
                and torch.device(self.searcher.device).type == "cuda"):
            key = (id(tower), len(idx), phase.n_neg, phase.lo, phase.hi)
            guard = tuple(t.data_ptr() for t in (*tower.parameters(), *tower.buffers()))  # where the graph reads
            packed = self.graphs.run(key, lambda *a: self._select(tower, *a, phase=phase), host, self.searcher.device,
                                     guard)
        graphed = packed is not None
        if packed is None:
            dev = torch.device(self.searcher.device) if self._resident() else torch.device("cpu")
            packed = self._select(tower, *(to_device(a, dev) for a in host), phase=phase, q=queries)
        neg, st = unpack_selection(packed.cpu().numpy(), len(idx), self.n_candidates, phase.n_neg)
        return MineResult(idx, neg, st, version, graphed)

    def _select(self, tower: torch.nn.Module, ctx_ids: torch.Tensor, pos_ids: torch.Tensor, start: torch.Tensor,
                *, phase: Phase, q: torch.Tensor | None = None) -> torch.Tensor:
        """The device work of a mining job, from the samples' context, target and article-start ids (and their
        queries ``q``, else the tower's) to :func:`pack_selection`'s tensor: encode, search, score, mask, filter.
        No host sync (CUDA-graph safe)."""
        dev = ctx_ids.device
        cmask = ctx_ids >= 0
        if q is None:
            ctx = self._rows(ctx_ids.clamp(min=0).reshape(-1)).reshape(*ctx_ids.shape, -1) * cmask[..., None]
            was_training = tower.training
            tower.eval()
            try:
                q = tower(ctx.to(self.device), cmask.to(self.device))
            finally:
                tower.train(was_training)
        q = q.float().to(dev)
        k = self.n_candidates
        if hasattr(self.searcher, "search_tensor"):
            cand = self.searcher.search_tensor(q, k)[1].to(dev)
        else:  # faiss: numpy in and out
            cand = torch.from_numpy(self.searcher.search(q.cpu().numpy(), k)[1]).to(dev)
        valid = cand >= 0
        rows = self._rows(torch.cat([cand.clamp(min=0).reshape(-1), pos_ids]))
        cvec, pvec = rows[:cand.numel()].reshape(*cand.shape, -1), rows[cand.numel():]
        cand_q = torch.einsum("bd,bkd->bk", q, cvec)
        cand_pos = torch.einsum("bd,bkd->bk", pvec, cvec)
        pos_q = (q * pvec).sum(-1)
        parts = self.masker.id_mask(pos_ids, cand)
        masked = ~valid | parts["self"] | parts["text"] | parts["window"] | (cand_pos >= 1.0 - self.masker.dup_eps)
        masked |= ((cand[:, :, None] == ctx_ids[:, None, :]) & cmask[:, None, :]).any(2)  # the sample's context
        cand_q = cand_q.masked_fill(~valid, float("-inf"))
        order = torch.sort(cand_q, dim=1, descending=True, stable=True).indices
        take = lambda a: torch.gather(a, 1, order)  # noqa: E731
        back = None
        if self.filters.keep_back:  # chunks of the target's article before the context (ids are in article order)
            back = take(before_target(cand, start, pos_ids) & ~masked)
        return pack_selection(take(cand), take(cand_q), take(cand_pos), pos_q, take(masked), phase, self.filters,
                              back)


class SyncMiner:
    """Mines a batch in the training process with the live tower (deterministic: exact resume holds)."""

    def __init__(self, core: MiningCore):
        self.core = core

    def mine(self, tower: torch.nn.Module, idx: np.ndarray, phase: Phase, step: int,
             queries: torch.Tensor | None = None) -> MineResult:
        return self.core.mine(tower, idx, phase, step, queries)
