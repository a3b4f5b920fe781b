"""Calibrated decoding: thresholds and cascade weights measured on VAL, stored with the run.

A cosine threshold means nothing across encoders (0.92 was set for GTR-T5; an all-MiniLM-L6-v2 prediction
rarely comes within 0.85 of any chunk). So the shipped profiles state an *intent* and ``vecrag calibrate``
turns it into cosines for one (bank, LVM, retriever):

- ``snap_precision: p``  SNAP at the lowest ``c`` from which, on VAL, the step's candidate is the true next
  chunk (or has its text) in at least ``p`` of the cases: the SNAP precision a user can expect;
- ``novel_share: s``     NOVEL for the ``s`` least confident steps on VAL (``tau_novel`` = the ``s``-quantile of
  ``c``; 0 = never NOVEL); between the two the step BLENDs.

``conservative`` grounds more (a lower precision bar, fewer NOVEL steps), ``creative`` less; a lane's override
shifts its profile's intent (``legal`` grounds more, the ``creative`` lane less), so lanes keep their
relative order on any encoder. ``c`` is measured as the decoder measures it: the cascade's shortlist with the
context's own chunks removed, teacher-forced on VAL articles, the step's candidate taken by the policy's ``pick``
rule (the cascade's best score by default). The file stores that rule as ``pick`` and calibrated profiles decode
with it, so the thresholds always hold for the candidates they were measured on (a file without it was measured
on the candidate nearest the prediction: ``cos``).

BLEND is fitted on the same VAL steps (:func:`choose_blend`): its bank side ``m`` (``blend_tau``: 0 is the
candidate ``n*``, above 0 the shortlist averaged with weights softmax(score / blend_tau), see
:mod:`vecrag.decode.policy`) and its weight ``a(x)`` on ``m``, growing with the bands' value ``x``. Each step
stores cos(v_hat, truth), cos(v_hat, m) and cos(m, truth), so the cosine to the truth of
``normalise(a * m + (1 - a) * v_hat)`` is known exactly for every ``a`` (:func:`blend_cos`). For each
``blend_tau`` of a grid, in each fifth of the steps by ``x`` the ``a`` with the best mean cosine is taken and the
five are made non-decreasing (pool-adjacent-violators, weighted by steps: :func:`fit_alpha`); a ``blend_tau``
above 0 is taken only when its paired gain over ``n*`` alone exceeds 1.96 standard errors. A calibration without
those columns keeps the preset's knots, moved onto its band, and blends with ``n*``.

The cascade's fusion weights (``w_lvm`` on cos(v_hat, candidate), the lane bonus) are chosen on VAL too, on a
grid that holds the first stage alone (``w_lvm = 0``, no lane bonus): a grid point is taken only when its
paired gain in Hit@10 over the first stage exceeds 1.96 standard errors (:func:`pick_fusion`), so the chosen
cascade is never below its first stage on VAL and does not chase noise; ties go to the smaller weights.

The file is ``calibration.json`` in the LVM's run directory (else the retriever's; for two heuristics
``BANK/eval/calibration-LVM+RETRIEVER.json``); it names the bank, the encoder and both models, and a loader
refuses it for any other pair.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from vecrag.decode.policy import alpha
from vecrag.errors import VecragError
from vecrag.runs.layout import CALIBRATION

FILE = CALIBRATION
KIND = "vecrag-decode-calibration"
VERSION = 1
INTENT_KEYS = ("snap_precision", "novel_share")
W_LVM_GRID = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)
MARGIN_GRID = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)
PRECISION_SHARES = (0.05, 0.1, 0.2)
LANE_GRID = (0.0, 0.02, 0.05)
ALPHA_GRID = tuple(round(0.05 * i, 2) for i in range(21))  # 0 .. 1
ALPHA_BINS = 5
BLEND_TAU_GRID = (0.0, 0.02, 0.05, 0.1, 0.2)


def _is_run(spec: str | None) -> bool:
    return bool(spec) and not str(spec).startswith("heuristic:")


def calibration_path(bank: Any, lvm: str, retriever: str) -> Path:
    """Where the calibration of this (LVM, retriever) pair lives (module doc)."""
    if _is_run(lvm):
        return Path(lvm) / FILE
    if _is_run(retriever):
        return Path(retriever) / FILE
    slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{lvm}+{retriever}")
    return Path(bank.path) / "eval" / f"calibration-{slug}.json"


def command_for(bank: Any, lvm: str, retriever: str) -> str:
    return f"vecrag calibrate {bank.path} --lvm {lvm} --retriever {retriever}"


def _identity(spec: str) -> str:
    return str(Path(spec).resolve()) if _is_run(spec) else spec


def load_calibration(bank: Any, lvm: str, retriever: str, *, required: bool = False,
                     why: str = "") -> dict[str, Any] | None:
    """The calibration of (bank, lvm, retriever), checked; None when there is none and it is not ``required``."""
    path = calibration_path(bank, lvm, retriever)
    cmd = command_for(bank, lvm, retriever)
    if not path.is_file():
        if not required:
            return None
        raise VecragError(f"{why or 'this needs'} a calibration of this LVM and retriever on this bank, and there is "
                          "none", path=path, hint=f"run `{cmd}` (a minute on a small bank), or pick an absolute "
                                                  "profile: --profile gtr-t5")
    return read_calibration(path, bank, fix=f"run `{cmd}`", lvm=lvm, retriever=retriever)


def read_calibration(path: str | Path, bank: Any, *, fix: str, lvm: str | None = None,
                     retriever: str | None = None) -> dict[str, Any]:
    """A calibration file, checked: readable, of this kind and version, made on ``bank`` (its size and encoder)
    and, when given, for this LVM and retriever; ``fix`` is the hint of every refusal."""
    import json

    path = Path(path)
    try:
        cal = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VecragError(f"the calibration file is unreadable ({e})", path=path, hint=fix) from e
    if not isinstance(cal, dict) or cal.get("kind") != KIND or cal.get("version") != VERSION or \
            not isinstance(cal.get("samples"), dict):
        raise VecragError("not a vecrag decode calibration (or from another version)", path=path, hint=fix)
    want: dict[str, Any] = {"bank_n": bank.n, "encoder": bank.encoder.get("name")}
    if lvm is not None and retriever is not None:
        want.update(lvm=_identity(lvm), retriever=_identity(retriever))
    got = {k: cal.get(k) for k in want}
    if got != want:
        diff = ", ".join(f"{k}: {got[k]!r} (here {want[k]!r})" for k in want if got[k] != want[k])
        raise VecragError(f"the calibration was made for another bank or model pair ({diff})", path=path, hint=fix)
    cal["path"] = str(path)
    return cal


def confidence(samples: dict[str, Any], margin_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """(x, hit) of the calibration's VAL steps: x = c + margin_weight * margin, the value the bands see."""
    c = np.asarray(samples["c"], np.float64)
    m = np.asarray(samples.get("margin", np.zeros(len(c))), np.float64)
    return c + float(margin_weight) * m, np.asarray(samples["hit"], bool)


def pick_margin_weight(c: np.ndarray, margin: np.ndarray, hit: np.ndarray,
                       grid: tuple[float, ...] = MARGIN_GRID) -> tuple[float, list[dict[str, float]]]:
    """The weight of the cascade's score margin in the bands' value ``c + w * margin`` that best ranks VAL steps
    by whether their candidate is the true next chunk: the highest mean SNAP precision over the most confident
    5 / 10 / 20 % of steps (ties: the smaller weight). Returns (weight, the grid's rows)."""
    rows = []
    for w in grid:
        x = c + w * margin
        order = np.argsort(-x, kind="stable")
        h = hit[order].astype(np.float64)
        prec = [float(h[:max(1, int(round(s * len(h))))].mean()) if len(h) else 0.0 for s in PRECISION_SHARES]
        rows.append({"margin_weight": w, **{f"precision@{int(100 * s)}%": p for s, p in zip(PRECISION_SHARES, prec,
                                                                                          strict=True)},
                     "score": float(np.mean(prec))})
    best = max(rows, key=lambda r: (round(r["score"], 9), -r["margin_weight"]))
    return float(best["margin_weight"]), rows


def blend_cos(a: float | np.ndarray, c: np.ndarray, cos_pred: np.ndarray, cos_cand: np.ndarray) -> np.ndarray:
    """cos(normalise(a * n + (1 - a) * v), t) from c = cos(v, n), cos(v, t) and cos(n, t) (unit v, n, t)."""
    a = np.asarray(a, np.float64)
    norm = np.sqrt(np.maximum(a * a + (1 - a) ** 2 + 2 * a * (1 - a) * c, 1e-12))
    return (a * cos_cand + (1 - a) * cos_pred) / norm


def _pava(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence nearest ``y`` in weighted least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight, length]
    for v, wt in zip(y.astype(np.float64), w.astype(np.float64), strict=True):
        blocks.append([v, wt, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, w1, n1), (m2, w2, n2) = blocks[-2], blocks.pop()
            blocks[-1] = [(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, n1 + n2]
    return np.concatenate([np.full(int(n), m) for m, _, n in blocks])


def fit_alpha(x: np.ndarray, c: np.ndarray, cos_pred: np.ndarray, cos_cand: np.ndarray, *,
              bins: int = ALPHA_BINS, grid: tuple[float, ...] = ALPHA_GRID) -> dict[str, Any]:
    """BLEND weights on the candidate that maximise the mean cosine of the blend to the truth on VAL (module doc):
    knots ``[[median x of a bin, a], ...]`` for :class:`vecrag.decode.policy.Policy`, with each bin's rows."""
    x, c, cp, cc = (np.asarray(v, np.float64) for v in (x, c, cos_pred, cos_cand))
    ok = np.isfinite(x) & np.isfinite(c) & np.isfinite(cp) & np.isfinite(cc)
    x, c, cp, cc = x[ok], c[ok], cp[ok], cc[ok]
    if len(x) < 2 * bins:
        raise VecragError(f"fitting the BLEND weight needs at least {2 * bins} VAL steps with a candidate, got "
                          f"{len(x)}")
    order = np.argsort(x, kind="stable")
    parts = np.array_split(order, bins)
    g = np.asarray(grid, np.float64)
    best, weight, rows = [], [], []
    for idx in parts:
        means = blend_cos(g[:, None], c[idx][None], cp[idx][None], cc[idx][None]).mean(axis=1)
        j = int(np.argmax(means))
        best.append(g[j])
        weight.append(len(idx))
        rows.append({"x_median": float(np.median(x[idx])), "n": int(len(idx)), "best_alpha": float(g[j]),
                     "cos_best": float(means[j]), "cos_vhat": float(cp[idx].mean())})
    mono = _pava(np.asarray(best), np.asarray(weight, np.float64))
    points: list[list[float]] = []
    for r, a in zip(rows, mono, strict=True):
        r["alpha"] = round(float(a), 4)
        if not points or r["x_median"] > points[-1][0]:
            points.append([round(r["x_median"], 6), r["alpha"]])
    return {"alpha_points": points, "bins": rows,
            "rule": f"in each of {bins} equal parts of the VAL steps by x, the weight in {g[0]:g}..{g[-1]:g} "
                    f"(step {g[1] - g[0]:g}) with the best mean cos(blend, truth); made non-decreasing"}


def choose_blend(x: np.ndarray, cos_pred: np.ndarray, partner_c: np.ndarray, partner_t: np.ndarray,
                 taus: tuple[float, ...] = BLEND_TAU_GRID, z: float = 1.96) -> dict[str, Any]:
    """BLEND's ``blend_tau`` and weights on VAL (module doc). ``partner_c`` / ``partner_t`` [n, len(taus)]: cos of
    each tau's bank side to v_hat and to the truth; ``taus[0]`` must be 0 (``n*`` alone, the reference)."""
    if not taus or taus[0] != 0.0:
        raise VecragError("choose_blend: the grid must start at blend_tau 0 (the candidate alone)")
    x, cp = np.asarray(x, np.float64), np.asarray(cos_pred, np.float64)
    fits, per_step, grid = [], [], []
    for i, tau in enumerate(taus):
        fit = fit_alpha(x, partner_c[:, i], cp, partner_t[:, i])
        got = blend_cos(alpha(x, points=fit["alpha_points"]), partner_c[:, i], cp, partner_t[:, i])
        fits.append(fit)
        per_step.append(got)
        grid.append({"tau": float(tau), "cos": float(got.mean()), "delta_vs_vhat": float((got - cp).mean()),
                     "alpha_points": fit["alpha_points"]})
    ok = [0]
    for i in range(1, len(taus)):
        d = per_step[i] - per_step[0]
        if len(d) > 1 and d.mean() > z * float(d.std(ddof=1)) / np.sqrt(len(d)):
            ok.append(i)
    best = max(ok, key=lambda i: (round(grid[i]["cos"], 9), -taus[i]))
    return {"tau": float(taus[best]), "alpha_points": fits[best]["alpha_points"], "bins": fits[best]["bins"],
            "grid": grid, "val_cos": grid[best]["cos"], "val_cos_vhat": float(cp.mean()),
            "rule": fits[best]["rule"] + "; blend_tau: the best mean cosine among the values whose paired gain over "
                                         "0 (n* alone) exceeds 1.96 standard errors"}


def threshold_for_precision(c: np.ndarray, hit: np.ndarray, p: float, min_support: int = 5) -> float:
    """The lowest ``c`` from which the share of hits among the steps at or above it reaches ``p``, counting only
    thresholds with at least ``min_support`` steps above them; +inf (never) when none reaches it. ``c`` finite."""
    if not len(c):
        return float("inf")
    order = np.argsort(-c, kind="stable")
    cs, hs = c[order], hit[order].astype(np.float64)
    prec = np.cumsum(hs) / np.arange(1, len(cs) + 1)
    # a threshold is a distinct value: take the last row of each run of equal c
    last = np.r_[cs[1:] != cs[:-1], True]
    ok = np.flatnonzero(last & (prec >= p) & (np.arange(1, len(cs) + 1) >= min_support))
    return float(cs[ok[-1]]) if len(ok) else float("inf")


def thresholds(c: np.ndarray, hit: np.ndarray, intent: dict[str, float]) -> dict[str, float]:
    """(tau_snap, tau_novel) for one intent (module doc), with the VAL shares they give."""
    c = np.asarray(c, np.float64)
    ok = np.isfinite(c)
    c, hit = c[ok], np.asarray(hit, bool)[ok]
    p = float(np.clip(intent.get("snap_precision", 0.5), 0.0, 1.0))
    s = float(np.clip(intent.get("novel_share", 0.0), 0.0, 1.0))
    # "never" is the bound of a cosine (+-1), or beyond every VAL value when x carries a margin term
    top = 1.0 if not len(c) or c.max() < 1.0 else float(c.max()) + 1.0
    bottom = -1.0 if not len(c) or c.min() > -1.0 else float(c.min()) - 1.0
    reached = threshold_for_precision(c, hit, p)
    tau_snap = reached if np.isfinite(reached) else top
    tau_novel = float(np.quantile(c, s)) if s > 0 and len(c) else bottom
    tau_novel = min(tau_novel, tau_snap - 1e-6)
    return {"tau_snap": round(tau_snap, 6), "tau_novel": round(tau_novel, 6),
            "val_snap_share": float(np.mean(c >= tau_snap)) if len(c) else 0.0,
            "val_novel_share": float(np.mean(c <= tau_novel)) if len(c) else 0.0,
            "val_snap_precision": float(hit[c >= tau_snap].mean()) if (c >= tau_snap).any() else None,
            "intent": {"snap_precision": p, "novel_share": s}}


def precision_curve(c: np.ndarray, hit: np.ndarray, qs: tuple[float, ...] = tuple(np.linspace(0, 0.99, 34))
                    ) -> list[dict[str, float]]:
    """SNAP share and precision when snapping at each quantile of ``c`` (the calibration's evidence)."""
    c = np.asarray(c, np.float64)
    ok = np.isfinite(c)
    c, hit = c[ok], np.asarray(hit, bool)[ok]
    rows = []
    for q in qs:
        t = float(np.quantile(c, q)) if len(c) else 1.0
        sel = c >= t
        rows.append({"quantile": round(float(q), 4), "tau": t, "share": float(sel.mean()) if len(c) else 0.0,
                     "precision": float(hit[sel].mean()) if sel.any() else None})
    return rows


def pick_fusion(rows: dict[tuple[float, float], dict[str, Any]], z: float = 1.96) -> tuple[float, float]:
    """(w_lvm, lane_lambda) with the best VAL Hit@10 (then MRR@10, then the smallest weights) among the grid
    points that beat the first stage alone ``(0, 0)`` by more than ``z`` (95 %) standard errors of the paired per-query
    difference (``rows[pt]["hits10"]``, bool per query); the first stage when none does. A gain that small
    samples cannot tell from noise is not taken, so the default stays at or above its first stage."""
    first = (0.0, 0.0)
    ok = [first]
    base = np.asarray(rows[first]["hits10"], np.float64) if "hits10" in rows[first] else None
    for pt, r in rows.items():
        if pt == first:
            continue
        if base is None or "hits10" not in r:
            ok.append(pt)
            continue
        d = np.asarray(r["hits10"], np.float64) - base
        se = float(d.std(ddof=1)) / np.sqrt(len(d)) if len(d) > 1 else float("inf")
        if d.mean() > z * se:
            ok.append(pt)
    return max(ok, key=lambda wl: (round(rows[wl]["Hit@10"], 9), round(rows[wl]["MRR@10"], 9), -wl[0], -wl[1]))


def intent_of(profile: dict[str, Any], lane_shift: dict[str, Any] | None = None) -> dict[str, float]:
    """A calibrated profile's intent, shifted by a lane's (additive) override."""
    out = {k: float(profile[k]) for k in INTENT_KEYS if k in profile}
    for k, v in (lane_shift or {}).items():
        if k in INTENT_KEYS:
            out[k] = out.get(k, 0.0) + float(v)
    return out


def calibrated_cascade(cal: dict[str, Any] | None, *, K: int, k: int = 10, timeout_ms: float | None = None,
                       w_tower: float = 1.0, w_lvm: float | None = None, lane_lambda: float | None = None,
                       w_topic: float | None = None) -> Any:
    """The cascade for a (possibly missing) calibration: explicit values first, then the calibration's VAL
    choices, else the first stage alone (w_lvm 0, no lane bonus, no topic term)."""
    from vecrag.decode.cascade import CascadeConfig

    fusion = (cal or {}).get("cascade", {}).get("chosen", {})
    gen = (cal or {}).get("generation", {}).get("chosen", {})
    return CascadeConfig(K=K, k=k, w_tower=w_tower,
                         w_lvm=w_lvm if w_lvm is not None else float(fusion.get("w_lvm", 0.0)),
                         lane_lambda=lane_lambda if lane_lambda is not None else float(fusion.get("lane_lambda", 0.0)),
                         timeout_ms=timeout_ms,
                         w_topic=w_topic if w_topic is not None else float(gen.get("w_topic", 0.0)))


def calibrated_feedback(cal: dict[str, Any] | None, override: str | None = None) -> str:
    """What a step feeds back to the context: ``override``, else the calibration's VAL choice, else ``shown``."""
    return override or (cal or {}).get("generation", {}).get("chosen", {}).get("feedback", "shown")
