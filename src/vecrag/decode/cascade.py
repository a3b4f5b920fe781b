"""Cascade retrieval: tower top-K -> fused re-rank with the LVM prediction -> lane re-rank -> top-k.

Scores (all cosines, since bank rows and queries are unit vectors)::

    fused = w_tower * cos(q, cand) + w_lvm * cos(v_hat, cand) + w_topic * cos(topic, cand)
            + lane_lambda * [lane(cand) == context lane]

``topic`` is the normalised mean of everything the generation has read so far (the prompt and the chunks it
showed): a candidate on the passage's topic ranks higher, so a rollout does not drift away after one wrong
step. It uses vectors only (no article ids, no bank order).

With ``w_tower = 0`` it is the original design's cascade (re-rank purely by the LVM); with ``w_lvm = 0`` the tower's
own order. Candidates with id -1 (FAISS padding) never rank.

**Fallback guard** (:class:`GuardedSearch`): the index is searched in ONE dedicated worker thread that owns
it (so a FAISS GPU index, which is not thread-safe, is never searched from two threads). The caller waits at
most ``timeout_ms`` (default 50 ms), and the deadline covers the whole call (waiting for a previous search,
the search itself, collecting its result): a search that finishes after it is a timeout too, whether or not
the wait noticed. A search that raises, overruns the deadline, or returns no valid id (all -1) yields no
shortlist: the caller's decision is NOVEL and the event is counted by reason
(``error`` / ``timeout`` / ``empty``). A timed-out search keeps running in the worker; while it does, at most
one new request waits behind it (the same bounded wait), so nothing queues up without bound. With
``timeout_ms=None`` the search runs inline in the caller (evaluation), still guarded against errors.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vecrag.errors import VecragError

log = logging.getLogger(__name__)
REASONS = ("error", "timeout", "empty")


@dataclass
class CascadeConfig:
    K: int = 500             # tower shortlist size
    k: int = 10              # final shortlist size
    w_tower: float = 1.0
    w_lvm: float = 1.0
    lane_lambda: float = 0.05
    timeout_ms: float | None = 50.0
    w_topic: float = 0.0

    def __post_init__(self) -> None:
        if self.K < 1 or self.k < 1:
            raise VecragError(f"cascade: K and k must be >= 1, got K={self.K}, k={self.k}")
        if self.k > self.K:
            raise VecragError(f"cascade: final k ({self.k}) cannot exceed the tower shortlist K ({self.K})")
        if self.timeout_ms is not None and self.timeout_ms <= 0:
            raise VecragError(f"cascade: timeout must be > 0 ms (or None for no timeout), got {self.timeout_ms}")


class GuardedSearch:
    """``index.search`` behind a bounded wait in a single owner thread; failures are counted, never raised."""

    def __init__(self, index: Any, timeout_ms: float | None = 50.0):
        self.index = index
        self.timeout_s = None if timeout_ms is None else float(timeout_ms) / 1000.0
        self.counts: Counter[str] = Counter()
        self.last_error = ""
        self._pool = (cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vecrag-search")
                      if self.timeout_s is not None else None)
        self._inflight: cf.Future | None = None

    def _fail(self, reason: str, n: int, k: int, msg: str = "") -> tuple[np.ndarray, np.ndarray, list[str]]:
        self.counts[reason] += n
        if msg:
            self.last_error = msg
            log.warning("retrieval %s: %s (decision falls back to NOVEL)", reason, msg)
        return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64), [reason] * n

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(scores [n, k], ids [n, k], reason per row: '' or error/timeout/empty)."""
        n = int(queries.shape[0])
        try:
            if self._pool is None:
                scores, ids = self.index.search(queries, k)
            else:
                deadline = time.perf_counter() + self.timeout_s
                if self._inflight is not None and not self._inflight.done():
                    try:  # a timed-out search still owns the worker: wait for it within the same budget
                        self._inflight.exception(timeout=max(0.0, deadline - time.perf_counter()))
                    except cf.TimeoutError:
                        return self._fail("timeout", n, k, "previous search still running")
                fut = self._pool.submit(self.index.search, queries, k)
                self._inflight = fut
                try:
                    scores, ids = fut.result(timeout=max(0.0, deadline - time.perf_counter()))
                except cf.TimeoutError:
                    return self._fail("timeout", n, k, f"search exceeded {1000 * self.timeout_s:g} ms")
                if time.perf_counter() > deadline:  # done, but after the deadline: the whole call is timed
                    return self._fail("timeout", n, k, f"search finished after {1000 * self.timeout_s:g} ms")
            scores = np.asarray(scores, np.float32)
            ids = np.asarray(ids, np.int64)
            if ids.shape != (n, ids.shape[1]) or scores.shape != ids.shape:
                raise ValueError(f"index returned shapes {scores.shape} / {ids.shape} for {n} queries")
        except Exception as e:  # noqa: BLE001 - the guard's whole point: retrieval never crashes generation
            return self._fail("error", n, k, f"{type(e).__name__}: {e}")
        empty = ~(ids >= 0).any(axis=1)
        reasons = ["empty" if e else "" for e in empty]
        if empty.any():
            self.counts["empty"] += int(empty.sum())
        return scores, ids, reasons

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


BACK_DEPTH = 256  # extra results fetched to drop an article's earlier chunks (never going back) and keep k others


def fuse(tower_scores: np.ndarray, lvm_scores: np.ndarray, ids: np.ndarray, *, w_tower: float, w_lvm: float,
         lane_bonus: np.ndarray | None = None) -> np.ndarray:
    """Fused scores [n, K] (-inf where id < 0)."""
    valid = ids >= 0
    t = np.where(valid, tower_scores, 0.0).astype(np.float64)  # padding scores are -inf: 0 * -inf is NaN
    s = w_tower * t + w_lvm * np.where(valid, lvm_scores, 0.0).astype(np.float64)
    if lane_bonus is not None:
        s = s + lane_bonus
    return np.where(valid, s, -np.inf)


def lane_bonus(ids: np.ndarray, lane_codes: np.ndarray | None, ctx_lane: np.ndarray | None,
               lam: float) -> np.ndarray | None:
    """+lam where a candidate's lane code equals the context's (codes < 0 = no lane, never boosted)."""
    if lane_codes is None or ctx_lane is None or lam == 0.0:
        return None
    cand = lane_codes[np.maximum(ids, 0)]
    same = (cand == ctx_lane[:, None]) & (ctx_lane[:, None] >= 0) & (ids >= 0)
    return lam * same.astype(np.float64)


def top_by(scores: np.ndarray, k: int) -> np.ndarray:
    """Column order of the best ``k`` scores per row (stable: ties keep the tower order)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@dataclass
class CascadeResult:
    ids: np.ndarray          # [n, k] final shortlist, -1 padded
    scores: np.ndarray       # [n, k] fused scores
    vectors: np.ndarray      # [n, k, D] float32 candidate vectors (zeros where id -1)
    reasons: list[str]       # per row: '' or the fallback reason
    timings_ms: dict[str, float] = field(default_factory=dict)


class Cascade:
    """The cascade over one bank and one index; ``run`` never raises because retrieval failed."""

    def __init__(self, index: Any, vectors: np.ndarray, cfg: CascadeConfig | None = None, *,
                 lane_codes: np.ndarray | None = None):
        self.cfg = cfg or CascadeConfig()
        self.vectors = vectors
        self.lane_codes = lane_codes
        self.guard = GuardedSearch(index, self.cfg.timeout_ms)

    @property
    def fallbacks(self) -> dict[str, int]:
        return {r: int(self.guard.counts.get(r, 0)) for r in REASONS}

    def run(self, q: np.ndarray, v_hat: np.ndarray, ctx_lane: np.ndarray | None = None, *,
            k: int | None = None, K: int | None = None, topic: np.ndarray | None = None) -> CascadeResult:
        cfg = self.cfg
        k, K = k or cfg.k, K or cfg.K
        t0 = time.perf_counter()
        t_scores, ids, reasons = self.guard.search(np.ascontiguousarray(q, np.float32), K)
        t1 = time.perf_counter()
        cand = np.asarray(self.vectors[np.maximum(ids, 0).reshape(-1)], np.float32).reshape(*ids.shape, -1)
        cand[ids < 0] = 0.0
        lvm = np.einsum("nkd,nd->nk", cand, np.asarray(v_hat, np.float32))
        bonus = lane_bonus(ids, self.lane_codes, ctx_lane, cfg.lane_lambda)
        if topic is not None and cfg.w_topic:
            tb = cfg.w_topic * np.einsum("nkd,nd->nk", cand, np.asarray(topic, np.float32)).astype(np.float64)
            bonus = tb if bonus is None else bonus + tb
        fused = fuse(t_scores, lvm, ids, w_tower=cfg.w_tower, w_lvm=cfg.w_lvm, lane_bonus=bonus)
        order = top_by(fused, k)
        rows = np.arange(len(ids))[:, None]
        out_ids = ids[rows, order]
        out_scores = fused[rows, order]
        out_ids = np.where(np.isfinite(out_scores), out_ids, -1)
        t2 = time.perf_counter()
        return CascadeResult(out_ids, out_scores.astype(np.float32), cand[rows, order], reasons,
                             {"search": 1000 * (t1 - t0), "rerank": 1000 * (t2 - t1)})

    def close(self) -> None:
        self.guard.close()

