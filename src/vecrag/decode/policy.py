"""The dual-path decision: SNAP to a bank vector, BLEND with it, or keep the NOVEL prediction.

Pure, deterministic functions of their arguments (no clocks, no randomness, no global state).

With ``n*`` the step's candidate and ``c`` = cos(v_hat, n*) (docs/design.md):

- ``SNAP``  if ``c >= tau_snap``: emit ``n*`` (the bank vector itself);
- ``NOVEL`` if ``c <= tau_novel``: emit ``v_hat``;
- ``BLEND`` otherwise: emit ``normalise(a(c) * m + (1 - a(c)) * v_hat)``, where ``m`` is the bank side of the
  blend: ``n*`` itself when ``blend_tau`` is 0 (the design's formula), else the shortlist's usable candidates
  averaged with weights ``softmax(cascade score / blend_tau)`` (:func:`blend_partner`; ``n*``, the best-scored,
  weighs most). One chunk is a noisy guess at the next one; the few the cascade ranks highest, averaged, are a
  better one: on wiki-1200 VAL the best blend with ``n*`` gains +0.034 cosine to the truth over ``v_hat``, with
  the top 10 at ``blend_tau`` 0.05 +0.060. ``vecrag calibrate`` chooses ``blend_tau`` and fits ``a`` on VAL.

**The candidate** (``pick``): ``"score"`` (the default) takes the shortlist's best cascade score (``scores``;
without them, the candidate nearest ``v_hat``), ``"cos"`` the candidate nearest ``v_hat``. The cascade's score already
carries the query tower and, with ``w_lvm``, the prediction; the candidate nearest the prediction is often a chunk
that resembles the context without continuing it. On wiki-1200 VAL rollouts (prompts of 3, 4 and 5 chunks, 94
articles) ``"score"`` covers 24.7 % of the true continuation against 21.9 % for ``"cos"`` (paired gain
+2.8 +- 2.6 points) and the greedy retrieval baselines' 21.7 / 18.0 %. ``c`` stays the cosine to the prediction
either way: the bands measure how far the prediction is from the bank.

``a(c)`` (:func:`alpha`) is the weight on the BANK vector: piecewise-linear through ``alpha_points``
(seed: 0.3 at 0.86, 0.7 at 0.91, 0.9 at 0.95), and constant outside the knots: below the first knot it is
clamped to the first weight (0.3, so the sliver of the default BLEND band between tau_novel=0.85 and 0.86
blends at 0.3), above the last knot to the last weight (0.9 "from 0.95").

**Near-duplicate rule.** A candidate whose cosine to v_hat is ``> near_dup`` (strictly; 0.98) and whose
id appears in the last ``near_dup_window`` entries of ``recent_ids`` (one entry per step; 8) is *skipped*:
the decision is taken again against the next-best candidate (by the ``pick`` rule) that is not skipped, with
that candidate's cosine and the usual bands (so it may SNAP to the next-best, BLEND with it or fall to NOVEL). We chose
next-best over "BLEND with n*" because blending at a(0.98) = 0.9 re-emits almost the same vector and does
not break a repetition loop. If every candidate is skipped the decision is NOVEL. ``Decision.c_max`` keeps
the highest cosine of the shortlist; ``Decision.c`` is the chosen candidate's.

**Retrieval margin** (``margin_weight``, 0 by default): the bands and ``a`` are applied to
``x = c + margin_weight * m``, where ``m`` is the candidate's cascade score minus the best score of the other
candidates (the shortlist's ``scores``; 0 without them). On MiniLM banks ``c`` alone barely predicts whether the
candidate is the true next chunk (on wiki-1200 VAL the 5 / 10 / 20 % of steps with the highest ``c`` reach a mean
SNAP precision of 16.2 %, 13.7 % over all steps) while adding the margin ranks them far better (32.4 % for
``c + 8 * m``); ``vecrag calibrate`` prints that grid and chooses the weight on VAL. ``Decision.c`` stays the
cosine; ``Decision.x`` is the value the bands saw.

Shortlist rows are assumed unit-norm (the bank contract); ``v_hat`` is re-normalised if it is not. Ids
``< 0`` (FAISS padding) are ignored. Cosines are computed in float64 so band edges are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vecrag.errors import VecragError

SNAP, BLEND, NOVEL = "SNAP", "BLEND", "NOVEL"
KINDS = (SNAP, BLEND, NOVEL)
PICKS = ("score", "cos")
DEFAULT_ALPHA_POINTS: tuple[tuple[float, float], ...] = ((0.86, 0.3), (0.91, 0.7), (0.95, 0.9))


def _num(x: object, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(float(x)):
        raise VecragError(f"decode policy: {name} must be a finite number, got {x!r}")
    return float(x)


@dataclass(frozen=True)
class Policy:
    """Thresholds of the dual-path decision (seed defaults). Validated on construction."""

    tau_snap: float = 0.92
    tau_novel: float = 0.85
    alpha_points: tuple[tuple[float, float], ...] = DEFAULT_ALPHA_POINTS
    near_dup: float = 0.98
    near_dup_window: int = 8
    K: int = 500
    force: str = ""  # "" (the bands decide), "SNAP" (always ground: greedy) or "NOVEL" (never: the LVM alone)
    margin_weight: float = 0.0  # bands on c + margin_weight * (cascade score margin); module doc
    pick: str = "score"  # the candidate n*: "score" (the cascade's best) or "cos" (nearest v_hat); module doc
    blend_tau: float = 0.0  # BLEND's bank side: n* (0) or the shortlist softmax-averaged at this temperature

    def __post_init__(self) -> None:
        ts, tn = _num(self.tau_snap, "tau_snap"), _num(self.tau_novel, "tau_novel")
        nd = _num(self.near_dup, "near_dup")
        with_margin = _num(self.margin_weight, "margin_weight") > 0  # the bands see c + w * margin: not a cosine
        for name, v in (("tau_snap", ts), ("tau_novel", tn), ("near_dup", nd)):
            if not -1.0 <= v <= 1.0 and not (with_margin and name != "near_dup"):
                raise VecragError(f"decode policy: {name}={v} is outside [-1, 1] (it is a cosine)")
        if not tn < ts:
            raise VecragError(f"decode policy: tau_novel ({tn}) must be < tau_snap ({ts}); "
                              "NOVEL applies at c <= tau_novel, SNAP at c >= tau_snap, BLEND between")
        try:
            pts = tuple((float(p[0]), float(p[1])) for p in self.alpha_points)
        except (TypeError, ValueError, IndexError) as e:
            raise VecragError(f"decode policy: alpha_points must be a list of [cosine, weight] pairs, "
                              f"got {self.alpha_points!r}") from e
        if not pts:
            raise VecragError("decode policy: alpha_points is empty; give at least one [cosine, weight] pair")
        for c, w in pts:
            if not (math.isfinite(c) and (-1.0 <= c <= 1.0 or with_margin)):
                raise VecragError(f"decode policy: alpha point cosine {c} is outside [-1, 1]")
            if not (math.isfinite(w) and 0.0 <= w <= 1.0):
                raise VecragError(f"decode policy: alpha weight {w} (at c={c}) is outside [0, 1] "
                                  "(it is the weight on the bank vector)")
        for (c0, w0), (c1, w1) in zip(pts, pts[1:], strict=False):
            if not c1 > c0:
                raise VecragError(f"decode policy: alpha_points cosines must be strictly increasing, got "
                                  f"{c0} then {c1}")
            if not w1 >= w0:
                raise VecragError(f"decode policy: alpha_points weights must not decrease (the weight on the "
                                  f"bank vector grows with c), got {w0} at {c0} then {w1} at {c1}")
        win, K = self.near_dup_window, self.K
        if isinstance(win, bool) or not isinstance(win, int) or win < 0:
            raise VecragError(f"decode policy: near_dup_window must be an integer >= 0 (steps), got {win!r}")
        if isinstance(K, bool) or not isinstance(K, int) or K < 1:
            raise VecragError(f"decode policy: K must be an integer >= 1 (shortlist size), got {K!r}")
        mw = _num(self.margin_weight, "margin_weight")
        if mw < 0:
            raise VecragError(f"decode policy: margin_weight must be >= 0, got {mw}")
        object.__setattr__(self, "margin_weight", mw)
        bt = _num(self.blend_tau, "blend_tau")
        if bt < 0:
            raise VecragError(f"decode policy: blend_tau must be >= 0 (0 blends with n* alone), got {bt}")
        object.__setattr__(self, "blend_tau", bt)
        if self.pick not in PICKS:
            raise VecragError(f"decode policy: pick must be one of {', '.join(PICKS)}, got {self.pick!r}")
        if self.force not in ("", SNAP, NOVEL):
            raise VecragError(f"decode policy: force must be '', SNAP or NOVEL, got {self.force!r}")
        object.__setattr__(self, "tau_snap", ts)
        object.__setattr__(self, "tau_novel", tn)
        object.__setattr__(self, "near_dup", nd)
        object.__setattr__(self, "alpha_points", pts)

    def replace(self, **fields: object) -> Policy:
        d = self.as_dict()
        d.update(fields)
        return Policy(**d)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        return {"tau_snap": self.tau_snap, "tau_novel": self.tau_novel,
                "alpha_points": tuple(tuple(p) for p in self.alpha_points), "near_dup": self.near_dup,
                "near_dup_window": self.near_dup_window, "K": self.K, "force": self.force,
                "margin_weight": self.margin_weight, "pick": self.pick, "blend_tau": self.blend_tau}


def alpha(c: float | np.ndarray, policy: Policy | None = None,
          points: Sequence[Sequence[float]] | None = None) -> float | np.ndarray:
    """Weight on the bank vector at cosine ``c``: piecewise-linear through the knots (``points``, else the
    policy's), clamped outside them."""
    pts = points if points is not None else (policy or Policy()).alpha_points
    xs = np.fromiter((p[0] for p in pts), dtype=np.float64)
    ys = np.fromiter((p[1] for p in pts), dtype=np.float64)
    out = np.interp(np.asarray(c, dtype=np.float64), xs, ys)
    return float(out) if np.ndim(out) == 0 else out


def classify(c: float | np.ndarray, policy: Policy) -> str | np.ndarray:
    """Band of cosine ``c``: SNAP if c >= tau_snap, NOVEL if c <= tau_novel, else BLEND (NaN -> NOVEL);
    a policy with ``force`` puts every finite ``c`` in that band."""
    arr = np.asarray(c, dtype=np.float64)
    if policy.force:
        out = np.where(np.isfinite(arr), policy.force, NOVEL)
        return str(out) if out.ndim == 0 else out.astype(object)
    out = np.where(arr >= policy.tau_snap, SNAP, np.where(arr > policy.tau_novel, BLEND, NOVEL))
    return str(out) if out.ndim == 0 else out.astype(object)


@dataclass(frozen=True)
class Decision:
    """One step's outcome. ``alpha`` is the weight on the bank vector actually used (1 SNAP, 0 NOVEL)."""

    kind: str
    c: float
    neighbour_id: int
    alpha: float
    vector: np.ndarray
    c_max: float = float("nan")
    skipped_ids: tuple[int, ...] = ()
    fallback: str = ""  # "", the retrieval failure that forced NOVEL ("error", "timeout", "empty") or "stall"
    x: float = float("nan")  # the value the bands were applied to: c + margin_weight * margin

    @property
    def used_id(self) -> int:
        """The bank id this step used (SNAP or BLEND), for the near-duplicate history; -1 for NOVEL."""
        return self.neighbour_id if self.kind in (SNAP, BLEND) else -1


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if not math.isfinite(n) or n == 0.0:
        raise VecragError("decode: the predicted vector is zero or not finite; check the LVM checkpoint")
    return v if abs(n - 1.0) < 1e-6 else v / n


def novel(v_hat: np.ndarray, *, reason: str = "") -> Decision:
    """The NOVEL decision (also the fallback when retrieval failed: ``reason`` says why)."""
    v = _unit(np.asarray(v_hat, dtype=np.float64))
    return Decision(NOVEL, float("nan"), -1, 0.0, v.astype(np.float32), fallback=reason)


def margins(scores: np.ndarray | None, usable: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """[n] the chosen column's score minus the best score of the row's other usable columns (0 without scores or
    without another candidate). ``scores`` and ``usable`` [n, k], ``pos`` [n] (-1: none chosen)."""
    n = len(pos)
    if scores is None or usable.shape[1] < 2:
        return np.zeros(n)
    sc = np.where(usable, np.asarray(scores, np.float64), -np.inf)
    rows = np.arange(n)
    p = np.maximum(pos, 0)
    own = sc[rows, p]
    other = sc.copy()
    other[rows, p] = -np.inf
    best_other = other.max(axis=1)
    with np.errstate(invalid="ignore"):  # a row without candidates: -inf - -inf, masked below
        m = own - best_other
    return np.where((pos >= 0) & np.isfinite(m), m, 0.0)


def blend_partner(cand_vecs: np.ndarray, scores: np.ndarray | None, usable: np.ndarray, pos: np.ndarray,
                  tau: float) -> np.ndarray:
    """[n, D] the bank side of a BLEND (module doc): the chosen candidate (column ``pos``) when ``tau`` is 0 or
    there are no scores, else the unit mean of the ``usable`` candidates weighted by ``softmax(score / tau)``.
    ``cand_vecs`` [n, k, D], ``scores`` and ``usable`` [n, k], ``pos`` [n] (-1: none; that row gets n*'s slot 0)."""
    cv = np.asarray(cand_vecs, np.float64)
    n = len(cv)
    star = cv[np.arange(n), np.maximum(pos, 0)]
    if tau <= 0 or scores is None or cv.shape[1] == 0:
        return star
    sc = np.where(usable, np.asarray(scores, np.float64).reshape(usable.shape), -np.inf)
    top = sc.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        w = np.where(np.isfinite(sc), np.exp((sc - np.where(np.isfinite(top), top, 0.0)) / tau), 0.0)
    mean = np.einsum("nk,nkd->nd", w, cv)
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    return np.where((norm > 1e-9) & (w.sum(axis=1, keepdims=True) > 0), mean / np.maximum(norm, 1e-12), star)


def decide(v_hat: np.ndarray, shortlist_vecs: np.ndarray, shortlist_ids: np.ndarray, policy: Policy,
           recent_ids: Sequence[int] = (), scores: np.ndarray | None = None) -> Decision:
    """SNAP / BLEND / NOVEL for one prediction against its shortlist (see the module docstring); ``scores``
    are the shortlist's cascade scores (for the margin)."""
    v = _unit(np.asarray(v_hat, dtype=np.float64).reshape(-1))
    ids = np.asarray(shortlist_ids, dtype=np.int64).reshape(-1)
    vecs = np.asarray(shortlist_vecs, dtype=np.float64).reshape(len(ids), -1) if len(ids) else None
    valid = ids >= 0
    if vecs is None or not valid.any():
        return novel(v, reason="empty")
    cos = np.where(valid, vecs @ v, -np.inf)
    c_max = float(cos.max())
    recent = set(int(i) for i in list(recent_ids)[-policy.near_dup_window:]) if policy.near_dup_window else set()
    skipped: list[int] = []
    key = cos
    if policy.pick == "score" and scores is not None:
        key = np.where(valid, np.asarray(scores, np.float64).reshape(-1), -np.inf)
        valid = valid & np.isfinite(key)
    order = np.argsort(-key, kind="stable")
    best = -1
    for j in order:
        if not valid[j]:
            break
        if cos[j] > policy.near_dup and int(ids[j]) in recent:
            skipped.append(int(ids[j]))
            continue
        best = int(j)
        break
    if best < 0:
        d = novel(v)
        return Decision(NOVEL, c_max, -1, 0.0, d.vector, c_max, tuple(skipped))
    c = float(cos[best])
    nid = int(ids[best])
    x = c
    # every recent near-duplicate is out of the running, not only those ranked above the candidate
    near = (cos > policy.near_dup) & np.isin(ids, np.asarray(sorted(recent), np.int64))
    usable = valid & ~near
    if policy.margin_weight and scores is not None:
        x = c + policy.margin_weight * float(margins(np.asarray(scores).reshape(1, -1), usable[None],
                                                     np.array([best]))[0])
    kind = classify(x, policy)
    if kind == SNAP:
        return Decision(SNAP, c, nid, 1.0, vecs[best].astype(np.float32), c_max, tuple(skipped), x=x)
    if kind == NOVEL:
        return Decision(NOVEL, c, nid, 0.0, v.astype(np.float32), c_max, tuple(skipped), x=x)
    a = float(alpha(x, policy))
    m = blend_partner(vecs[None], None if scores is None else np.asarray(scores).reshape(1, -1), usable[None],
                      np.array([best]), policy.blend_tau)[0]
    mixed = a * m + (1.0 - a) * v
    norm = float(np.linalg.norm(mixed))
    out = mixed / norm if norm > 1e-9 else v  # only reachable with a negative tau_novel
    return Decision(BLEND, c, nid, a, out.astype(np.float32), c_max, tuple(skipped), x=x)


def decide_batch(v_hat: np.ndarray, cand_vecs: np.ndarray, cand_ids: np.ndarray, policy: Policy,
                 recent_ids: np.ndarray | None = None, scores: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Vectorised :func:`decide` for evaluation: ``v_hat`` [n, D], ``cand_vecs`` [n, k, D], ``cand_ids`` [n, k],
    ``recent_ids`` [n, W] (-1 padded; the last ``near_dup_window`` columns are used), ``scores`` [n, k] the
    cascade scores (for the margin).

    Returns arrays: ``kind`` (object), ``c``, ``c_max``, ``neighbour`` (id, -1 if none), ``pos`` (column of the
    chosen candidate, -1 if none), ``alpha`` (weight on the bank vector used), ``margin``, ``x`` (the value the
    bands saw), ``usable`` [n, k] (the candidates a BLEND may average), ``partner`` [n, D] (the bank side a BLEND
    of the row mixes with, whatever its band) and ``vector`` [n, D] float32. Agrees with :func:`decide` row by row.
    """
    v = np.asarray(v_hat, dtype=np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    ids = np.asarray(cand_ids, dtype=np.int64)
    n, k = ids.shape
    cv = np.asarray(cand_vecs, dtype=np.float64)
    valid = ids >= 0
    cos = np.where(valid, np.einsum("nkd,nd->nk", cv, v), -np.inf)
    c_max = cos.max(axis=1) if k else np.full(n, -np.inf)
    usable = cos.copy()
    if policy.pick == "score" and scores is not None:
        usable = np.where(valid, np.asarray(scores, np.float64).reshape(n, k), -np.inf)
        usable[~np.isfinite(usable)] = -np.inf
    if recent_ids is not None and policy.near_dup_window and recent_ids.shape[1]:
        rec = np.asarray(recent_ids, dtype=np.int64)[:, -policy.near_dup_window:]
        hit = ((ids[:, :, None] == rec[:, None, :]) & (rec[:, None, :] >= 0)).any(axis=2)
        usable[hit & (cos > policy.near_dup)] = -np.inf
    pos = usable.argmax(axis=1) if k else np.zeros(n, np.int64)
    if k:
        c = np.where(np.isfinite(usable[np.arange(n), pos]), cos[np.arange(n), pos], -np.inf)
    else:
        c = np.full(n, -np.inf)
    has = np.isfinite(c)
    pos = np.where(has, pos, -1)
    nb = np.where(has, ids[np.arange(n), np.maximum(pos, 0)] if k else -1, -1)
    m = margins(scores, np.isfinite(usable), pos) if k else np.zeros(n)
    x = np.where(has, c + policy.margin_weight * m, -np.inf)
    kind = np.where(has, classify(x, policy), NOVEL).astype(object)
    a = np.where(kind == SNAP, 1.0, np.where(kind == BLEND, alpha(np.where(has, x, 0.0), policy), 0.0))
    star = cv[np.arange(n), np.maximum(pos, 0)] if k else np.zeros_like(v)
    usable_mask = np.isfinite(usable)
    partner = blend_partner(cv, scores, usable_mask, pos, policy.blend_tau) if k else star
    mixed = a[:, None] * partner + (1.0 - a[:, None]) * v
    norms = np.linalg.norm(mixed, axis=1, keepdims=True)
    vec = np.where(norms > 1e-9, mixed / np.maximum(norms, 1e-12), v)
    vec[kind == SNAP] = star[kind == SNAP]
    c_out = np.where(has, c, np.where(np.isfinite(c_max), c_max, np.nan))
    return {"kind": kind, "c": c_out, "c_max": np.where(np.isfinite(c_max), c_max, np.nan), "neighbour": nb,
            "pos": pos, "alpha": a, "vector": vec.astype(np.float32), "margin": m,
            "x": np.where(has, x, np.nan), "usable": usable_mask if k else np.zeros((n, 0), bool),
            "partner": partner}
