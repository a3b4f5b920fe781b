"""Inner-product search over a bank: FAISS indexes (flat / IVF / HNSW / IVF-PQ, CPU or GPU, sharded) and an
exact torch matmul search that needs no FAISS.

Every index answers ``search(queries float32 [n, D], k) -> (scores float32 [n, k], ids int64 [n, k])``,
best first, padded with id -1 and score -inf when fewer than ``k`` results exist. Bank vectors are unit
rows, so the inner product is the cosine.

Files: ``BANK/index/<kind>.faiss`` (written atomically; IVF-PQ on disk adds ``BANK/index/<kind>-*.ivfdata``),
with the parameters in ``manifest["index"]`` (type, file, params, ntotal, dim, build time). Build with
``vecrag.index.build.build_index``, load with ``vecrag.index.load.load_index``, or call
``vecrag.index.load.open_index`` to get the saved index or, when none is saved, an :class:`ExactTorchIndex`.

Threading: CPU FAISS indexes may be searched from several threads; a GPU FAISS index may not (see
``vecrag.index.gpu``), so :class:`FaissIndex` serialises GPU calls (search and parameter changes) with a
lock: the index is owned by whichever thread holds it, one at a time.

GPUs: FAISS GPU indexes need a faiss build with GPU support; without one, the
GPU path measured (benchmarks/scaling.py, docs/scaling.md) is :class:`ExactTorchIndex` on CUDA (fp16
bank resident on the GPU, matmul + top-k in query chunks); FAISS indexes run on the CPU cores beside it.

Thread counts are set with ``faiss.omp_set_num_threads`` by ``build_index``/``load_index`` when
``threads`` is given (and by ``vecrag.runtime.set_threads`` at command start).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vecrag.bank.store import Bank
from vecrag.errors import VecragError

log = logging.getLogger(__name__)

INDEX_DIR = "index"
KINDS = ("flat", "ivf", "hnsw", "ivfpq")
AUTO_FLAT_MAX = 200_000  # auto: exact flat search below this many vectors, IVF above


class SearchIndex:
    """The search interface shared by every index (FAISS or torch)."""

    kind: str = ""
    dim: int = 0
    ntotal: int = 0
    device: str = "cpu"
    params: dict[str, Any]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "dim": self.dim, "ntotal": self.ntotal, "device": self.device,
                "params": dict(getattr(self, "params", {}))}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind}, n={self.ntotal}, dim={self.dim}, device={self.device})"


def check_search_args(queries: np.ndarray, k: int, dim: int) -> np.ndarray:
    """Validate ``k`` and the query matrix; return C-contiguous float32 queries [n, dim]."""
    if not isinstance(k, int | np.integer) or k <= 0:
        raise VecragError(f"k must be a positive integer, got {k!r}", hint="ask for at least one result (-k 10)")
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise VecragError(f"queries have shape {q.shape}, the index holds {dim}-D vectors",
                          hint="encode queries with the bank's encoder (see `vecrag bank info`), or rebuild "
                               "the index with `vecrag index BANK` if the bank changed")
    return np.ascontiguousarray(q)


def _finish(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32).copy()
    scores[ids < 0] = -np.inf
    return scores, ids


# ---------------------------------------------------------------------------------------------------
# exact search with torch
# ---------------------------------------------------------------------------------------------------
class ExactTorchIndex(SearchIndex):
    """Exact inner-product top-k by matmul, in query chunks and bank blocks (no FAISS needed).

    This is vecrag's measured GPU search and mining path (where faiss-gpu is not installable).
    ``vectors`` may be a memory-mapped fp16/fp32 bank. On CUDA the bank is copied to the GPU once, in blocks
    of ``block_rows`` (fp16 by default: 2 bytes a value, 7.7 GB for 10M x 384; scores within ~1e-3, so
    near-ties may swap order); on CPU it is held as fp32, or, with ``resident=False``, converted block by
    block at search time (memory-light, slower). ``dtype=torch.float32`` on CUDA gives exact fp32 scores.
    ``vectors`` may also be a tensor already on ``device`` (the trainer's resident bank): its blocks are then
    views of it, so the trainer, its validation and its miners hold ONE copy of the bank on the GPU (at 10M x
    384 fp16, 7.7 GB each; four copies were allocated before, docs/scaling.md).

    Memory beyond the bank is bounded: queries are searched ``chunk`` at a time, with ``chunk`` chosen so
    that one score block (``chunk x block_rows``) holds at most ``max_elems`` values (default 2**26 on CPU,
    2**28 = 512 MB of fp16 on CUDA); per block only the running top-k (``chunk x 2k``) is kept.
    """

    kind = "exact"

    def __init__(self, vectors: np.ndarray, device: str = "cpu", dtype: Any = None, *, resident: bool = True,
                 query_chunk: int = 4096, max_elems: int | None = None, block_rows: int = 1 << 20):
        import torch

        from vecrag.runtime import pick_device

        self.device = pick_device(device)
        self.dtype = dtype or (torch.float16 if self.device.startswith("cuda") else torch.float32)
        self.ntotal, self.dim = int(vectors.shape[0]), int(vectors.shape[1])
        self.max_elems = int(max_elems or (1 << 28 if self.device != "cpu" else 1 << 26))
        self.query_chunk, self.block_rows = query_chunk, block_rows
        self.params = {"dtype": str(self.dtype).replace("torch.", ""), "resident": resident}
        self._source = vectors
        self._whole: Any = None  # the resident bank, ONE tensor; searched in views of block_rows rows
        if isinstance(vectors, torch.Tensor):  # zero-copy views when it already has this device and dtype
            self._whole = vectors.to(self.device, self.dtype)
        elif resident or self.device != "cpu":
            try:
                self._whole = torch.empty((self.ntotal, self.dim), dtype=self.dtype, device=self.device)
                for s in range(0, self.ntotal, block_rows):
                    blk = np.array(vectors[s:s + block_rows], dtype=np.float32)
                    self._whole[s:s + len(blk)] = torch.from_numpy(blk).to(self.device, self.dtype)
            except torch.OutOfMemoryError as e:
                self._whole = None
                raise VecragError(f"the bank ({self.ntotal} x {self.dim}) does not fit in {self.device} memory",
                                  hint="use a FAISS index sharded over GPUs (`vecrag index BANK --device cuda`) "
                                       "or search on the CPU") from e

    def query_chunk_size(self) -> int:
        """Queries per matmul: at most ``query_chunk``, and ``chunk x block rows <= max_elems``."""
        rows = max(1, min(self.block_rows, self.ntotal))
        return max(1, min(self.query_chunk, self.max_elems // rows))

    def _iter_blocks(self) -> Any:
        import torch

        for s in range(0, self.ntotal, self.block_rows):
            if self._whole is not None:  # a view of the resident bank
                yield s, self._whole[s:s + self.block_rows]
            else:  # read and converted block by block (resident=False)
                blk = np.array(self._source[s:s + self.block_rows], dtype=np.float32)
                yield s, torch.from_numpy(blk).to(self.device, self.dtype)

    @property
    def is_resident(self) -> bool:
        """The bank is held in memory (on this index's device): ``gather`` works."""
        return self._whole is not None

    def gather(self, ids: Any) -> Any | None:
        """Rows ``ids`` (numpy or a tensor) of the resident bank as a float32 tensor on this index's device (None
        when the bank is not resident). Miners use it to score candidates without re-reading the memory map."""
        import torch

        if self._whole is None:
            return None
        ids_t = (ids.to(self.device) if isinstance(ids, torch.Tensor)
                 else torch.as_tensor(np.asarray(ids, np.int64), device=self.device))
        # one gather, no host sync (the CUDA-graph miner captures it); index_select, not bank[ids]: 0.56 vs 1.66 ms
        # for a 64-query mining batch's 4,800 rows on the 2-core CPU (benchmarks/mining_step.py)
        return self._whole.index_select(0, ids_t.reshape(-1)).reshape(*ids_t.shape, self.dim).float()

    def search_tensor(self, qt: Any, k: int) -> tuple[Any, Any]:
        """Top-``k`` (scores, ids) of a query tensor, as tensors on this index's device (no copy to the host:
        the GPU miner keeps working on them). ``k`` must be at most ``ntotal``; queries are one chunk."""
        import torch

        from vecrag.index.topk import fast_topk

        qt = qt.to(self.device, self.dtype)
        best_s = best_i = None
        for start, blk in self._iter_blocks():
            s = qt @ blk.T  # fp16 on CUDA: top-k on the half scores, no fp32 copy of the block
            if s.device.type == "cpu" and s.dtype != torch.float32:
                s = s.float()
            top_s, top_i = fast_topk(s, min(k, blk.shape[0]))  # 4.8x torch.topk at 1M columns on the H200
            top_i = top_i + start
            del s
            if best_s is not None:
                top_s = torch.cat([best_s, top_s], 1)
                top_i = torch.cat([best_i, top_i], 1)
                top_s, j = torch.topk(top_s, min(k, top_s.shape[1]), dim=1)
                top_i = torch.gather(top_i, 1, j)
            best_s, best_i = top_s, top_i
        return best_s, best_i

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        q = check_search_args(queries, k, self.dim)
        n = q.shape[0]
        kk = min(k, self.ntotal)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        if n == 0 or kk == 0:
            return scores, ids
        chunk = self.query_chunk_size()
        with torch.inference_mode():
            for qs in range(0, n, chunk):
                best_s, best_i = self.search_tensor(torch.from_numpy(q[qs:qs + chunk]), kk)
                scores[qs:qs + chunk, :kk] = best_s.float().cpu().numpy()
                ids[qs:qs + chunk, :kk] = best_i.cpu().numpy()
        return scores, ids


# ---------------------------------------------------------------------------------------------------
# FAISS
# ---------------------------------------------------------------------------------------------------
class FaissIndex(SearchIndex):
    """A FAISS inner-product index (CPU, or cloned to GPU(s)) with optional exact re-ranking.

    ``refine`` > 0 (IVF-PQ): fetch ``refine * k`` candidates and re-score them exactly against
    ``vectors`` (the bank's memory-mapped rows), so PQ's approximate scores only pick the shortlist.
    The CPU index is kept beside a GPU clone: it answers ``k > 2048`` (the GPU limit).
    A GPU clone is used under a lock: one caller at a time (FAISS GPU indexes are not thread-safe).
    """

    def __init__(self, cpu_index: Any, kind: str, params: dict[str, Any] | None = None, *,
                 device: str = "cpu", vectors: np.ndarray | None = None, fp16: bool = False, shard: bool = True):
        from vecrag.index.gpu import resolve_faiss_device, to_gpu

        self.cpu_index = cpu_index
        self.kind = kind
        self.params = dict(params or {})
        self.dim, self.ntotal = int(cpu_index.d), int(cpu_index.ntotal)
        self.vectors = vectors
        self.refine = int(self.params.get("refine") or 0)
        if self.refine and vectors is None:
            raise VecragError("re-ranking (refine) needs the bank vectors", hint="pass vectors=bank.vectors")
        self._lock = threading.Lock()
        self.gpu_index = to_gpu(cpu_index, shard=shard, fp16=fp16) if resolve_faiss_device(device) == "cuda" else None
        self.device = "cuda" if self.gpu_index is not None else "cpu"
        self.set_search_params(nprobe=self.params.get("nprobe"), ef_search=self.params.get("ef_search"))

    def set_search_params(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        import faiss

        from vecrag.index.gpu import set_gpu_param

        if nprobe is not None and self.kind in ("ivf", "ivfpq"):
            faiss.extract_index_ivf(self.cpu_index).nprobe = int(nprobe)
            if self.gpu_index is not None:
                with self._lock:
                    set_gpu_param(self.gpu_index, "nprobe", int(nprobe))
            self.params["nprobe"] = int(nprobe)
        if ef_search is not None and self.kind == "hnsw":
            self.cpu_index.hnsw.efSearch = int(ef_search)
            self.params["ef_search"] = int(ef_search)

    def route(self, k: int) -> str:
        """``"gpu"`` or ``"cpu"`` for a search of ``k`` results (see :func:`vecrag.index.gpu.search_route`)."""
        from vecrag.index.gpu import search_route

        kk = k * self.refine if self.refine else k
        return search_route(kk, has_gpu=self.gpu_index is not None, nprobe=self.params.get("nprobe"))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = check_search_args(queries, k, self.dim)
        import faiss

        kk = k * self.refine if self.refine else k
        if self.route(k) == "gpu":
            with self._lock:
                scores, ids = self.gpu_index.search(q, kk)
        elif self.kind == "hnsw":  # HNSW returns at most efSearch results: per-call params (thread-safe)
            ef = max(int(self.params.get("ef_search") or 0), kk)
            scores, ids = self.cpu_index.search(q, kk, params=faiss.SearchParametersHNSW(efSearch=ef))
        else:
            scores, ids = self.cpu_index.search(q, kk)
        if self.refine:
            scores, ids = self._rerank(q, ids, k)
        return _finish(scores[:, :k], ids[:, :k])

    def _rerank(self, q: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.vectors is not None
        valid = ids >= 0
        uniq, inv = np.unique(ids[valid], return_inverse=True)
        vecs = np.asarray(self.vectors[uniq], dtype=np.float32)
        exact = np.full(ids.shape, -np.inf, dtype=np.float32)
        rows = np.nonzero(valid)[0]
        exact[valid] = np.einsum("nd,nd->n", q[rows], vecs[inv])
        order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1)


def index_dir(bank: Bank) -> Path:
    return bank.path / INDEX_DIR


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Silence C++ prints to fd 1 (FAISS's on-disk code logs there), so `--json` output stays clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def read_faiss(path: Path, *, kind: str = "", on_disk: bool = False) -> Any:
    """Read a FAISS index file; a missing, truncated or corrupt file raises a VecragError.

    On-disk inverted lists are looked up beside the index file (``IO_FLAG_ONDISK_SAME_DIR``), so a bank
    directory can be moved.
    """
    import faiss

    fix = f"rebuild it with `vecrag index {path.parent.parent} --type {kind or 'auto'}`"
    if not path.is_file():
        raise VecragError("index file is missing", path=path, hint=fix)
    try:
        if on_disk:
            with quiet_stdout():
                return faiss.read_index(str(path.resolve()), faiss.IO_FLAG_ONDISK_SAME_DIR)
        return faiss.read_index(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        raise VecragError(f"index file is corrupt or truncated ({first})", path=path, hint=fix) from e


def recall_vs_exact(index: SearchIndex, exact: SearchIndex, queries: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact top-k ids that ``index`` also returns in its top-k."""
    _, approx_ids = index.search(queries, k)
    _, true_ids = exact.search(queries, k)
    hits = [len(set(a[a >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
            for a, t in zip(approx_ids, true_ids, strict=True)]
    return float(np.mean(hits)) if hits else 0.0
