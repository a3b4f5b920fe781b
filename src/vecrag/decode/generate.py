"""Vector-native generation: context -> (LVM, tower) -> cascade -> SNAP/BLEND/NOVEL -> next context vector.

One step (:meth:`Decoder.step`)::

    v_hat = lvm(ctx); q = tower(ctx)                      # Predictors (trained runs or heuristics)
    shortlist = cascade(q, v_hat, lane)                   # guarded: error/timeout/empty -> NOVEL, counted
    decision = decide(v_hat, shortlist, policy(lane), recent ids)
    ctx += decision.vector

Text out: SNAP -> the snapped bank chunk's text; BLEND -> the text of its candidate ``n*`` (the chunk it blends
with, the heaviest member of its bank side), marked approximate; NOVEL -> the shortlist's chunk nearest to the
prediction, marked approximate (with a configured inverter, BLEND and NOVEL also show the inverted text). A BLEND
that averages the shortlist (``blend_tau`` > 0) emits a vector between several chunks, and the chunk nearest to it
is often a generic one rather than the chunk the cascade ranks best.

**No loops, no echo** (``no_repeat``, the default everywhere): a chunk this rollout already showed or used, a
prompt chunk (by id), and any bank chunk with the same text as one of those or as a text prompt's chunk, never
enters a shortlist again: it can neither be snapped to nor shown as a BLEND/NOVEL step's text. The
near-duplicate rule (c > 0.98 against a chunk used in the last 8 steps) keeps its meaning for SNAP.
With ``exclude_context`` the bank chunks in the context window are removed too (implied by ``no_repeat``,
kept for ``no_repeat=False``, which shows what the decoder does without the rule).

**Feedback** (``feedback``): what a step appends to the context. ``"emitted"`` appends the decision's vector
(SNAP: the bank vector; BLEND: the mix; NOVEL: the raw prediction); ``"shown"`` appends the vector of the chunk
the step shows (the bank chunk whose text the user reads), so the context is always the text on the screen.
A chain of NOVEL steps under ``"emitted"`` feeds the LVM its own predictions and collapses onto one point
(`vecrag eval generate` measures the cosine between consecutive emitted vectors).

**Stall guard** (``stall``, 0.98): a BLEND or NOVEL step whose vector would have a cosine above 0.98 to the previous
step's is grounded instead (``fallback`` "stall" in the step's record): a BLEND over the shortlist blends with its
candidate alone, and when that does not move either, or the step was NOVEL, it SNAPs to its candidate. The
rollout's emitted vectors never stop moving.

With ``never_back`` (``vecrag generate --never-back``) the shortlist also drops every chunk of an article the
context has visited up to the furthest chunk used there: generation never goes back in an article. It reads
the bank's order, so it is an option, never a default.

The context lane is ``--lane`` when given; otherwise the lane predicted from the prompt's last L vectors by the
bank's lane classifier (:func:`vecrag.bank.lanes.context_lane_classifier`, the rule ``eval cascade`` / ``eval decode``
measure), or without one the lane of the bank chunk nearest to the last prompt vector; after that, the lane
of the most recently used bank chunk (SNAP/BLEND).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vecrag.bank.lanes import lane_codes_of
from vecrag.decode.cascade import BACK_DEPTH, Cascade, CascadeConfig, CascadeResult
from vecrag.decode.policy import BLEND, SNAP, Decision, decide, novel
from vecrag.decode.profiles import PolicySet
from vecrag.errors import VecragError
from vecrag.scoring.predictors import Predictor


@dataclass
class Step:
    """One generated step (``as_dict`` is the --json / telemetry record)."""

    step: int
    decision: Decision
    lane: str
    text_id: int
    text: str | None
    approx: bool
    latency_ms: dict[str, float]
    inverted: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = self.decision

        def num(x: float) -> float | None:
            return None if x is None or not np.isfinite(x) else round(float(x), 6)

        out = {"step": self.step, "decision": d.kind, "c": num(d.c), "x": num(d.x), "c_max": num(d.c_max),
               "lane": self.lane,
               "neighbour_id": d.neighbour_id, "alpha": num(d.alpha), "fallback": d.fallback or None,
               "skipped_ids": list(d.skipped_ids), "text_id": self.text_id, "text": self.text,
               "approx": self.approx, "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()}}
        if self.inverted is not None:
            out["inverted_text"] = self.inverted
        out.update(self.extra)
        return out


def window(ctx: list[np.ndarray], L: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The last ``L`` context vectors, right-aligned in [1, L, D], with the mask of real slots."""
    out = np.zeros((1, L, dim), np.float32)
    mask = np.zeros((1, L), bool)
    tail = ctx[-L:]
    if tail:
        out[0, L - len(tail):] = np.stack(tail)
        mask[0, L - len(tail):] = True
    return out, mask


FEEDBACK = ("emitted", "shown")
STALL = 0.98  # a BLEND/NOVEL step this close (cosine) to the previous emitted vector is grounded (SNAP) instead
ECHO_DEPTH = 64  # nearest bank chunks per prompt chunk checked for text that a text prompt contains
MAX_BANNED_DEPTH = 4096  # at most this many extra results are fetched to make room for banned chunks


class Decoder:
    """Generation over one bank: owns the cascade (and its search thread); close() when done."""

    def __init__(self, vectors: np.ndarray, texts: list[str], lanes: np.ndarray | None, index: Any,
                 lvm: Predictor, tower: Predictor, policies: PolicySet, cfg: CascadeConfig | None = None,
                 *, lane: str | None = None, inverter: Any = None, K: int | None = None,
                 exclude_context: bool = False, lane_classifier: np.ndarray | None = None,
                 never_back: bool = False, article_start: np.ndarray | None = None,
                 text_group: np.ndarray | None = None, no_repeat: bool = True, feedback: str = "emitted",
                 stall: float | None = STALL):
        """``K`` fixes the tower shortlist size; by default each step uses its lane policy's K.
        ``exclude_context``: drop the context window's own bank chunks from every shortlist (module doc).
        ``lane_classifier``: one unit row per lane, in sorted lane-name order, to pick the prompt's lane.
        ``never_back`` (needs ``article_start``: each chunk's article's first chunk id, ``Bank.article_start``):
        drop the chunks of a visited article up to the furthest one used (module doc).
        ``text_group`` (``Bank.text_group``): chunks with the same text share a group; with ``no_repeat`` a
        chunk whose text was shown is banned with it (without it, only ids are). ``feedback``: module doc.
        ``stall``: a BLEND / NOVEL step whose vector has a cosine above it to the previous step's SNAPs instead
        (None: never)."""
        if never_back and article_start is None:
            raise VecragError("never_back needs article_start (Bank.article_start: each chunk's article start)")
        if feedback not in FEEDBACK:
            raise VecragError(f"feedback must be one of {', '.join(FEEDBACK)}, got {feedback!r}")
        self.vectors, self.texts = vectors, texts
        self.lvm, self.tower, self.policies = lvm, tower, policies
        self.lanes = lanes if lanes is not None else np.full(len(texts), "", dtype=object)
        codes, names = lane_codes_of(self.lanes)
        self.lane_lut = {n: i for i, n in enumerate(names)}
        self.lane_names = names
        self.lane_classifier = lane_classifier
        self.cascade = Cascade(index, vectors, cfg or CascadeConfig(), lane_codes=codes)
        self.fixed_lane = lane
        self.inverter = inverter
        self.recent: list[int] = []
        self.K = K
        self.exclude_context = exclude_context
        self.never_back, self.article_start = never_back, article_start
        self.text_group, self.no_repeat, self.feedback = text_group, no_repeat, feedback
        self.stall = stall
        self._last_vector: np.ndarray | None = None
        self.group_size = np.bincount(text_group) if text_group is not None and len(text_group) else None
        self.reset()

    def reset(self, prompt_ids: list[int] | None = None, prompt_texts: list[str] | None = None,
              prompt_vectors: list[np.ndarray] | None = None) -> None:
        """Start a new generation: the prompt's chunks (ids, texts) are banned from now on (``no_repeat``).
        With ``prompt_vectors`` (a text prompt) a bank chunk whose text the prompt contains is banned too, though
        no prompt chunk equals it (the prompt was chunked otherwise than the bank, e.g. a pasted passage): the
        ``ECHO_DEPTH`` nearest bank chunks of each prompt chunk are checked."""
        self.recent = [int(i) for i in (prompt_ids or [])]
        self.banned_ids: set[int] = set()
        self.banned_groups: set[int] = set()
        self.banned_texts = {t.strip() for t in (prompt_texts or []) if t and t.strip()}
        self._group_extra = 0
        self._last_vector = None
        for i in prompt_ids or []:
            self.ban(int(i))
        if self.no_repeat and prompt_texts and prompt_vectors:
            whole = " ".join(" ".join(prompt_texts).split())
            q = np.asarray(np.stack(prompt_vectors), np.float32)
            _, ids, _ = self.cascade.guard.search(q, min(ECHO_DEPTH, len(self.texts)))
            for i in np.unique(ids).tolist():
                t = self.texts[i].strip() if i >= 0 else ""
                if t and t not in self.banned_texts and " ".join(t.split()) in whole:
                    self.banned_texts.add(t)

    def ban(self, i: int) -> None:
        """Never show or use bank chunk ``i`` (nor a chunk with its text) again in this generation."""
        if i < 0 or i in self.banned_ids:
            return
        self.banned_ids.add(i)
        if self.text_group is not None:
            g = int(self.text_group[i])
            if g not in self.banned_groups:
                self.banned_groups.add(g)
                self._group_extra += int(self.group_size[g]) - 1 if self.group_size is not None else 0

    @classmethod
    def for_bank(cls, bank: Any, index: Any, lvm: Predictor, tower: Predictor, policies: PolicySet,
                 cfg: CascadeConfig | None = None, *, lane: str | None = None, never_back: bool = False,
                 **kw: Any) -> Decoder:
        """The decoder `vecrag generate`, `POST /generate` and `vecrag eval generate` use, over a Bank: its
        texts, lanes, text groups (no repeats by text) and, when no ``lane`` is fixed, its lane classifier; it feeds
        back the chunk each step shows unless ``feedback="emitted"``."""
        from vecrag.bank.lanes import context_lane_classifier

        kw.setdefault("exclude_context", True)
        kw.setdefault("feedback", "shown")
        return cls(bank.vectors, bank.texts, bank.lanes, index, lvm, tower, policies, cfg, lane=lane,
                   lane_classifier=None if lane else context_lane_classifier(bank)[0], never_back=never_back,
                   article_start=bank.article_start if never_back else None, text_group=bank.text_group, **kw)

    @property
    def fallbacks(self) -> dict[str, int]:
        return self.cascade.fallbacks

    def _ctx(self, ctx: list[np.ndarray], L: int) -> tuple[np.ndarray, np.ndarray]:
        return window(ctx, L, self.vectors.shape[1])

    def initial_lane(self, prompt: list[np.ndarray]) -> str:
        if self.fixed_lane is not None:
            return self.fixed_lane
        if not self.lane_lut or not prompt:
            return ""
        if self.lane_classifier is not None:
            from vecrag.bank.lanes import predict_lanes

            ctx, mask = self._ctx(prompt, max(self.lvm.context_len, self.tower.context_len))
            code = int(predict_lanes(ctx, mask, self.lane_classifier)[0])
            return self.lane_names[code] if 0 <= code < len(self.lane_names) else ""
        _, ids, _ = self.cascade.guard.search(np.asarray(prompt[-1], np.float32)[None], 1)
        return str(self.lanes[ids[0, 0]]) if ids[0, 0] >= 0 else ""

    def shortlist(self, q: np.ndarray, v_hat: np.ndarray, code: np.ndarray, ctx_ids: list[int] | None, *,
                  K: int, k: int | None = None, topic: np.ndarray | None = None) -> CascadeResult:
        """The cascade's top-``k`` (default: its config's k) for one step. With ``exclude_context`` the context
        window's own bank chunks (``ctx_ids``; -1 = not a bank chunk) are fetched on top of k and dropped (id -1,
        zero vector), so that k others remain; K grows with them if it must."""
        L = max(self.lvm.context_len, self.tower.context_len)
        excluded = {int(x) for x in (ctx_ids or [])[-L:] if x >= 0} if self.exclude_context else set()
        if self.no_repeat:
            excluded |= self.banned_ids
        k = k or self.cascade.cfg.k
        reach = self._reach(ctx_ids) if self.never_back else {}
        texts = self.banned_texts if self.no_repeat else set()
        depth = len(excluded) + (self._group_extra if self.no_repeat else 0) + 4 * len(texts)
        kk = k + min(depth, MAX_BANNED_DEPTH) + (BACK_DEPTH if reach else 0)
        kk = min(kk, len(self.vectors))
        res = self.cascade.run(q, v_hat, code, K=min(max(K, kk), len(self.vectors)), k=kk, topic=topic)
        if (excluded or reach or texts) and not res.reasons[0]:
            drop = np.isin(res.ids, np.asarray(sorted(excluded), np.int64))
            if self.no_repeat and self.banned_groups and self.text_group is not None:
                groups = np.asarray(sorted(self.banned_groups), np.int64)
                drop |= (res.ids >= 0) & np.isin(self.text_group[np.maximum(res.ids, 0)], groups)
            if texts:
                drop |= np.array([[i >= 0 and self.texts[i].strip() in texts for i in row] for row in res.ids],
                                 dtype=bool).reshape(res.ids.shape)
            if reach:
                starts = self.article_start[np.maximum(res.ids, 0)]
                for a, furthest in reach.items():  # the few articles the context visited
                    drop |= (starts == a) & (res.ids <= furthest)
            drop |= np.cumsum(~drop & (res.ids >= 0), axis=1) > k  # keep the first k survivors
            res.ids[drop] = -1
            res.vectors[drop] = 0.0
        return res

    def _unstall(self, dec: Decision, res: CascadeResult, policy: Any, v_hat: np.ndarray) -> Decision:
        """Ground a BLEND / NOVEL step whose vector would barely move from the previous step's (cosine above
        ``stall``): a prediction fed its own outputs converges, and such a chain collapses onto one point. A BLEND
        over the shortlist (``blend_tau`` > 0) first blends with its candidate alone at the same weight (the
        shortlist's average moves little from step to step when the context does); if that too stays within
        ``stall``, or the step was NOVEL or blended with ``n*`` already, it SNAPs to its candidate
        (``Decision.fallback`` = "stall" either way). A policy that forces its decision keeps it."""
        prev, self._last_vector = self._last_vector, dec.vector
        if (self.stall is None or prev is None or policy.force or dec.kind == SNAP or dec.neighbour_id < 0
                or dec.fallback):
            return dec
        if float(np.dot(dec.vector, prev)) <= self.stall:
            return dec
        if dec.kind == BLEND and policy.blend_tau > 0:  # the same decision, blended with n* alone
            alone = decide(v_hat, res.vectors[0], res.ids[0], policy.replace(blend_tau=0.0), self.recent,
                           scores=res.scores[0])
            if float(np.dot(alone.vector, prev)) <= self.stall:
                self._last_vector = alone.vector
                return replace(alone, fallback="stall")
        j = int(np.flatnonzero(res.ids[0] == dec.neighbour_id)[0])
        vec = np.asarray(res.vectors[0][j], np.float32)
        self._last_vector = vec
        return Decision(SNAP, dec.c, dec.neighbour_id, 1.0, vec, dec.c_max, dec.skipped_ids, fallback="stall",
                        x=dec.x)

    def _reach(self, ctx_ids: list[int] | None) -> dict[int, int]:
        """article start id -> the furthest chunk id of that article in the context (bank chunks only)."""
        out: dict[int, int] = {}
        for x in ctx_ids or []:
            if x >= 0:
                a = int(self.article_start[x])
                out[a] = max(out.get(a, -1), int(x))
        return out

    def step(self, ctx: list[np.ndarray], lane: str, i: int = 0, ctx_ids: list[int] | None = None) -> Step:
        """One step; ``ctx_ids`` (aligned with ``ctx``, -1 where a vector is not a bank chunk) name the
        chunks excluded from the shortlist when ``exclude_context``."""
        t0 = time.perf_counter()
        c_lvm, m_lvm = self._ctx(ctx, self.lvm.context_len)
        v_hat = self.lvm(c_lvm, m_lvm)
        t1 = time.perf_counter()
        c_tw, m_tw = self._ctx(ctx, self.tower.context_len)
        q = self.tower(c_tw, m_tw)
        t2 = time.perf_counter()
        policy = self.policies.for_lane(lane)
        code = np.array([self.lane_lut.get(lane, -1)], np.int64)
        topic = None
        if self.cascade.cfg.w_topic:
            m = np.mean(np.asarray(ctx, np.float32), axis=0)
            topic = (m / max(float(np.linalg.norm(m)), 1e-12))[None]
        res = self.shortlist(q, v_hat, code, ctx_ids, K=self.K or policy.K, topic=topic)
        t3 = time.perf_counter()
        if res.reasons[0]:
            dec = novel(v_hat[0], reason=res.reasons[0])
        else:
            dec = decide(v_hat[0], res.vectors[0], res.ids[0], policy, self.recent, scores=res.scores[0])
            dec = self._unstall(dec, res, policy, v_hat[0])
        t4 = time.perf_counter()
        self.recent.append(dec.used_id)
        del self.recent[:-max(1, policy.near_dup_window)]
        text_id, approx = dec.neighbour_id, True
        if dec.kind == SNAP:
            approx = False
        elif dec.kind == BLEND and dec.neighbour_id >= 0:
            pass  # the chunk the step blends with (module doc)
        elif not res.reasons[0]:
            valid = res.ids[0] >= 0
            if valid.any():
                sims = np.where(valid, res.vectors[0] @ dec.vector, -np.inf)
                text_id = int(res.ids[0][int(np.argmax(sims))])
        inverted = None
        if self.inverter is not None and dec.kind != SNAP:
            inverted = self.inverter.invert(dec.vector[None])[0]
        t5 = time.perf_counter()
        lat = {"lvm": 1000 * (t1 - t0), "tower": 1000 * (t2 - t1), "search": res.timings_ms.get("search", 0.0),
               "rerank": res.timings_ms.get("rerank", 0.0), "decide": 1000 * (t4 - t3),
               "total": 1000 * (t5 - t0)}
        return Step(i, dec, lane, text_id, self.texts[text_id] if text_id >= 0 else None, approx, lat, inverted)

    def generate(self, prompt: list[np.ndarray], steps: int, prompt_ids: list[int] | None = None,
                 prompt_texts: list[str] | None = None) -> Iterator[Step]:
        """Yield ``steps`` steps; each step's feedback vector (module doc) is appended to the context.

        ``prompt_ids`` (when the prompt is made of bank chunks) seed the near-duplicate history: those chunks
        count as used in the steps just before generation starts. With ``no_repeat`` they, and bank chunks
        with the text of a ``prompt_texts`` chunk, are never shown.
        """
        ctx = [np.asarray(v, np.float32) for v in prompt]
        self.reset(prompt_ids, prompt_texts, None if prompt_ids else ctx)
        ctx_ids = [int(i) for i in prompt_ids] if prompt_ids and len(prompt_ids) == len(ctx) else [-1] * len(ctx)
        lane = self.initial_lane(ctx)
        for i in range(steps):
            st = self.step(ctx, lane, i, ctx_ids)
            self.ban(st.text_id)
            self.ban(st.decision.used_id)
            if self.feedback == "shown" and st.text_id >= 0:
                ctx.append(np.asarray(self.vectors[st.text_id], np.float32))
                ctx_ids.append(st.text_id)
            else:
                ctx.append(st.decision.vector.astype(np.float32))
                ctx_ids.append(st.decision.used_id)
            if self.fixed_lane is None and st.decision.used_id >= 0:
                lane = str(self.lanes[st.decision.used_id])
            yield st

    def close(self) -> None:
        self.cascade.close()


def continuation(steps: list[dict[str, Any]]) -> str:
    """Generated steps (``Step.as_dict()`` records) as one readable passage: SNAP text as is, the text shown for a
    BLEND or NOVEL step marked ``[~ ...]``."""
    parts = []
    for s in steps:
        if s["text"] is None:
            parts.append("[no text: retrieval failed]")
        else:
            parts.append(f"[~ {s['text']}]" if s["approx"] else s["text"])
    return " ".join(parts)
