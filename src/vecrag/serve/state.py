"""What the server loads once at startup and shares across requests.

Concurrency choice: **one dedicated compute thread** (a single-worker ``ThreadPoolExecutor``) owns every
call into the index, the encoder and the models. Request handlers are ``async``; they validate the input on
the event loop and ``await`` the compute call on that thread. Why not a lock around the faiss search:
- a FAISS GPU index is not thread-safe even for search, and torch models / tokenizers are not meant to be
  driven from many threads at once; a single owner thread makes all of them safe at once;
- CPU FAISS and torch already use every core per call (OpenMP / intra-op threads); running several calls
  concurrently only oversubscribes the cores (docs/design.md), so serial compute gives the same or
  better throughput and far steadier tail latency;
- the queue in front of the thread is bounded (``max_pending``): beyond it the server answers 503 with
  ``Retry-After`` instead of growing memory and latency without bound;
- serial compute makes batching free: concurrent /search requests are coalesced (:class:`SearchBatcher`)
  into one encoder call and one index search per batch.
Lazy per-bank tables (texts, lanes, titles) are materialised at startup so no request races to build them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vecrag.bank.store import Bank
from vecrag.errors import VecragError
from vecrag.serve.runs import RunRegistry

log = logging.getLogger(__name__)
T = TypeVar("T")


class Busy(Exception):
    """The compute queue is full."""


class Compute:
    """A single worker thread with a bounded number of pending calls."""

    def __init__(self, max_pending: int = 256):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vecrag-compute")
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        return self._pending

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._pending >= self.max_pending:
                raise Busy()
            self._pending += 1
        try:
            return await asyncio.wrap_future(self.executor.submit(fn, *args))
        finally:
            with self._lock:
                self._pending -= 1

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class SearchBatcher:
    """Coalesces concurrent /search requests into one encoder call and one index search per batch.

    While a batch runs on the compute thread, new requests wait in a list; when it finishes, everything
    waiting goes as the next batch (up to ``max_batch`` queries). A lone request therefore runs at once,
    and under load one BLAS-backed search of B queries replaces B single-query searches. Each request gets
    its own top-k (the batch searches the largest k and cuts). Admission is bounded like the compute queue.
    """

    def __init__(self, state: ServeState, max_batch: int = 64):
        self.state = state
        self.max_batch = max_batch
        self._waiting: list[tuple[list[str] | None, np.ndarray | None, int, asyncio.Future]] = []
        self._running = False
        self.batches = 0
        self.queries = 0
        self.in_flight = 0  # requests in the batch now on the compute thread

    async def search(self, *, texts: list[str] | None = None, vectors: np.ndarray | None = None,
                     k: int) -> list[list[dict[str, Any]]]:
        compute = self.state.compute
        if len(self._waiting) + compute.pending >= compute.max_pending:
            raise Busy()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.append((texts, vectors, k, fut))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, n = [], 0
                while self._waiting and (not batch or n + self._size(self._waiting[0]) <= self.max_batch):
                    item = self._waiting.pop(0)
                    batch.append(item)
                    n += self._size(item)
                self.in_flight = len(batch)
                try:
                    results = await self.state.compute.run(self._run_batch, batch)
                except Exception as e:  # noqa: BLE001 - handed to every request of the batch
                    for *_, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                finally:
                    self.in_flight = 0
                for (*_, fut), res in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)
        finally:
            self._running = False

    @staticmethod
    def _size(item: tuple) -> int:
        texts, vectors, _, _ = item
        return len(texts) if texts is not None else int(vectors.shape[0])

    def _run_batch(self, batch: list[tuple]) -> list[list[list[dict[str, Any]]]]:
        """Compute thread: one encode for all texts, one search for all queries, then split per request."""
        st = self.state
        texts = [t for tx, _, _, _ in batch if tx is not None for t in tx]
        encoded = st.encode(texts) if texts else np.zeros((0, st.bank.dim), np.float32)
        parts, ti = [], 0
        for tx, vec, _, _ in batch:
            if tx is not None:
                parts.append(encoded[ti:ti + len(tx)])
                ti += len(tx)
            else:
                parts.append(vec)
        kmax = max(k for _, _, k, _ in batch)
        scores, ids = st.search(np.concatenate(parts), kmax)
        self.batches += 1
        self.queries += len(scores)
        out, qi = [], 0
        for part, (_, _, k, _) in zip(parts, batch, strict=True):
            m = len(part)
            out.append(st.hits(scores[qi:qi + m, :k], ids[qi:qi + m, :k]))
            qi += m
        return out


@dataclass
class ServeState:
    bank: Bank
    index: Any
    titles: dict[int, str]
    encoder: Any | None = None
    encoder_error: str | None = None
    decoder: Any | None = None  # vecrag.serve.decoding.Decoding when the decoder loads
    decoder_error: str | None = None
    runs: RunRegistry = field(default_factory=RunRegistry)
    compute: Compute = field(default_factory=Compute)
    started: float = field(default_factory=time.time)
    batcher: SearchBatcher | None = None

    def __post_init__(self) -> None:
        self.batcher = SearchBatcher(self)

    def close(self) -> None:
        self.compute.close()
        if self.decoder is not None:
            self.decoder.close()

    # ---- compute (runs on the compute thread) ------------------------------------------------------
    def encode(self, texts: list[str]) -> np.ndarray:
        if self.encoder is None:
            raise VecragError(f"text input needs the bank's encoder, which is not available: {self.encoder_error}",
                              hint="send vectors instead, or serve a bank built with a loadable encoder")
        return self.encoder.encode(texts)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[list[dict[str, Any]]]:
        """Per query, the non-empty results with their text, title, article, position and lane."""
        texts, lanes = self.bank.texts, self.bank.lanes
        art, pos = self.bank.article_of, self.bank.position_of
        out = []
        for srow, irow in zip(scores, ids, strict=True):
            row = []
            for s, i in zip(srow.tolist(), irow.tolist(), strict=True):
                if i < 0:
                    continue
                a = int(art[i])
                row.append({"id": int(i), "score": float(s), "text": texts[i], "title": self.titles.get(a, ""),
                            "article_id": a, "position": int(pos[i]), "lane": str(lanes[i] or "")})
            out.append(row)
        return out

    def describe(self) -> dict[str, Any]:
        idx = self.index.describe() if hasattr(self.index, "describe") else {"type": type(self.index).__name__}
        return {
            "bank": {"path": str(self.bank.path), "n_chunks": self.bank.n, "dim": self.bank.dim,
                     "encoder": self.bank.encoder.get("name")},
            "index": idx,
            "encoder": {"available": self.encoder is not None, "error": self.encoder_error},
            "decoder": {"available": self.decoder is not None, "error": self.decoder_error,
                        **(self.decoder.describe() if self.decoder is not None else {})},
            "runs_root": str(self.runs.root) if self.runs.root else None,
            "uptime_s": round(time.time() - self.started, 1),
            "pending": self.compute.pending,
            "search_batches": {"batches": self.batcher.batches, "queries": self.batcher.queries},
        }


def load_state(bank_path: str | Path, *, lvm: str | Path | None = None, retriever: str | Path | None = None,
               runs_root: str | Path | None = None, device: str = "auto", load_text_encoder: bool = True,
               max_pending: int = 256, backend: str = "auto", profiles: str | Path | None = None,
               timeout_ms: float | None = 50.0) -> ServeState:
    """Open the bank, its index, the encoder and (when the decoder is installed) the decoding stack."""
    bank = Bank.open(bank_path)
    t0 = time.perf_counter()
    from vecrag.index.load import open_index

    index = open_index(bank, backend=backend, device=device)
    # materialise lazy tables now (cached_property is not safe to build from two threads at once)
    _ = bank.texts, bank.lanes, bank.article_of, bank.position_of, bank.article_start, bank.text_group
    arts = bank.articles
    titles = dict(zip(arts.column("article_id").to_pylist(), arts.column("title").to_pylist(), strict=True))
    encoder, enc_err = None, None
    if load_text_encoder:
        encoder, enc_err = _load_encoder(bank, device)
    else:
        enc_err = "text encoding disabled (--no-encoder)"
    extra = {Path(p).name: Path(p) for p in (lvm, retriever) if p is not None and Path(p).is_dir()}
    state = ServeState(bank=bank, index=index, titles=titles, encoder=encoder, encoder_error=enc_err,
                       runs=RunRegistry(runs_root, extra), compute=Compute(max_pending))
    from vecrag.serve.decoding import load_decoding

    state.decoder, state.decoder_error = load_decoding(state, lvm=lvm, retriever=retriever, device=device,
                                                       profiles_path=profiles, timeout_ms=timeout_ms)
    log.info("serving %s (%d x %d, index %s, encoder %s, decoder %s) loaded in %.1f s", bank.path, bank.n,
             bank.dim, getattr(index, "kind", "?"), "yes" if encoder else "no", "yes" if state.decoder else "no",
             time.perf_counter() - t0)
    return state


def _load_encoder(bank: Bank, device: str) -> tuple[Any | None, str | None]:
    name = bank.encoder.get("name")
    try:
        from vecrag.bank.encode import load_encoder

        enc = load_encoder(name, device=device)
        bank.check_encoder(enc.info.name, enc.info.dim)
        return enc, None
    except (VecragError, ImportError) as e:
        msg = str(e).splitlines()[0]
        log.warning("text queries disabled: %s", msg)
        return None, msg
