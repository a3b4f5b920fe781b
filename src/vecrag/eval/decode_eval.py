"""Teacher-forced decoding evaluation on held-out articles (docs/design.md, decoding metrics).

For every sample (true context -> true next chunk): v_hat = LVM(context), shortlist = the cascade's final
top-k (tower top-K, fused re-rank, lane bonus for the lane predicted from the context alone; FULL bank),
decision = the policy of the article's lane (also the per-lane grouping). Teacher forcing
means the context is always the true one; the near-duplicate history is the context's own chunk ids
(the chunks "used" in the steps just before), so snapping back onto a context chunk at c > 0.98 is skipped
exactly as in generation. Retrieval failures are counted and the sample is NOVEL.

Reported: % SNAP / BLEND / NOVEL overall and per lane; SNAP precision (the snapped id is the true next chunk
or has its text); mean cos(emitted, true next) against mean cos(v_hat, true next), overall, per decision
kind and per lane (where SNAP/BLEND help or hurt); an oracle-snap upper bound (snap to the true next chunk
whenever it, or a chunk with its text, is in the shortlist); and a sweep over (tau_snap, tau_novel) with the
profile's alpha curve and near-duplicate rule (lane overrides do not apply in the sweep).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vecrag.bank.lanes import context_lane_classifier, lane_codes_of, predict_lanes
from vecrag.bank.sequences import Samples, gather_context
from vecrag.bank.store import Bank
from vecrag.decode.cascade import BACK_DEPTH, Cascade, CascadeConfig
from vecrag.decode.policy import KINDS, NOVEL, SNAP, Policy, alpha, blend_partner, decide_batch
from vecrag.decode.profiles import PolicySet
from vecrag.eval.cascade_eval import context_len, predict
from vecrag.scoring.metrics import kept_results
from vecrag.scoring.predictors import Predictor

SWEEP_SNAP = tuple(round(0.80 + 0.01 * i, 2) for i in range(20))          # 0.80 .. 0.99
# wiki-full and wiki-300 both peaked at the old lower edge (0.70), so the grid reaches down to 0.0 (with
# MiniLM vectors the nearest bank chunk is almost always at c > 0: tau_novel 0.0 means "always at least BLEND")
SWEEP_NOVEL = (0.0, 0.3, 0.5, 0.6, 0.65, 0.70, 0.75, 0.80, 0.82, 0.85, 0.88, 0.90, 0.92, 0.94)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def drop_context(ids: np.ndarray, vecs: np.ndarray, ctx_ids: np.ndarray | None, k: int, *,
                 start: np.ndarray | None = None, target: np.ndarray | None = None,
                 scores: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Remove the context's own ids (with ``start``/``target``: also the article's chunks before the target) from a
    ranked shortlist and keep the first ``k`` of the rest (-1 padded); with ``scores``, those too (third value)."""
    keep = kept_results(ids, ctx_ids, start=start, target=target)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    out_ids = np.where(np.take_along_axis(keep, order, 1), np.take_along_axis(ids, order, 1), -1)
    out_vecs = np.take_along_axis(vecs, order[:, :, None], 1)
    if scores is None:
        return out_ids, out_vecs
    return out_ids, out_vecs, np.take_along_axis(scores, order, 1)


def collect(bank: Bank, samples: Samples, lvm: Predictor, tower: Predictor, index: Any, policies: PolicySet,
            cfg: CascadeConfig, *, exclude_context: bool = True, batch: int = 64,
            progress: bool = False, never_back: bool = False,
            blend_taus: tuple[float, ...] = ()) -> tuple[dict[str, np.ndarray], dict]:
    """Per-sample arrays of the teacher-forced decisions, and the retrieval fallback counts.

    ``exclude_context`` (default, the section 5 hit rule): the context's own chunk ids are removed from the
    shortlist before deciding (they are never the next chunk); otherwise they stay and only the
    near-duplicate rule (c > near_dup) keeps the decoder from snapping back onto them. ``never_back``: the
    article's chunks before the context are removed too (``vecrag generate --never-back``). For each of
    ``blend_taus`` (a calibration's grid), ``sw_partner_c`` / ``sw_partner_t`` [n, len(blend_taus)] hold the
    cosine of that BLEND partner to v_hat and to the truth.
    """
    L = context_len(lvm, tower)
    codes, _ = lane_codes_of(bank.lanes)
    tg = bank.text_group
    cas = Cascade(index, bank.vectors, CascadeConfig(K=cfg.K, k=cfg.k, w_tower=cfg.w_tower, w_lvm=cfg.w_lvm,
                                                     lane_lambda=cfg.lane_lambda, timeout_ms=None),
                  lane_codes=codes)
    centroids = context_lane_classifier(bank)[0]
    sweep_policy = policies.default
    n = len(samples)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in (
        "kind", "c", "neighbour", "cos_emit", "cos_vhat", "snap_hit", "in_shortlist", "cos_oracle", "lane",
        "sw_c", "sw_cos_star", "sw_cos_blend", "sw_hit", "sw_margin", "sw_partner_c", "sw_partner_t",
        "fallback")}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="eval decode", unit="q")
    for s in range(0, n, batch):
        sl = slice(s, min(n, s + batch))
        ctx_ids = samples.context_ids(L, sl)
        tgt = samples.target[sl]
        m = len(tgt)
        ctx, mask = gather_context(bank.vectors, ctx_ids)
        v_hat = _unit_rows(predict(lvm, ctx, mask))
        q = predict(tower, ctx, mask)
        lane = np.asarray(bank.lanes[np.maximum(ctx_ids[:, -1], 0)], dtype=object)
        # the lane bonus uses the lane predicted from the context alone (the article's label leaks the target,
        # see eval/cascade_eval.py); tables are grouped, and lane policies chosen, by the article's label
        extra = (L if exclude_context else 0) + (BACK_DEPTH if never_back else 0)
        res = cas.run(q, v_hat, predict_lanes(ctx, mask, centroids), k=cfg.k + extra)
        failed = np.array([bool(r) for r in res.reasons])
        ids, cvecs, scores = res.ids, res.vectors, res.scores
        if extra:
            ids, cvecs, scores = drop_context(ids, cvecs, ctx_ids if exclude_context else None, cfg.k,
                                              start=samples.start[sl] if never_back else None, target=tgt,
                                              scores=scores)
        ids = np.where(failed[:, None], -1, ids)
        tvec = bank.vectors_f32(tgt)
        kind = np.full(m, NOVEL, dtype=object)
        c = np.full(m, np.nan)
        nb = np.full(m, -1, np.int64)
        emit = v_hat.copy()
        for ln in np.unique(lane.astype(str)):
            rows = np.flatnonzero(lane.astype(str) == ln)
            out = decide_batch(v_hat[rows], cvecs[rows], ids[rows], policies.for_lane(ln), ctx_ids[rows],
                               scores[rows])
            kind[rows], c[rows], nb[rows], emit[rows] = out["kind"], out["c"], out["neighbour"], out["vector"]
        sw = decide_batch(v_hat, cvecs, ids, sweep_policy, ctx_ids, scores)
        pos = np.maximum(sw["pos"], 0)
        star = cvecs[np.arange(m), pos]
        a = np.asarray(alpha(np.nan_to_num(sw["x"], nan=0.0), sweep_policy))
        blend = _unit_rows(a[:, None] * sw["partner"] + (1 - a[:, None]) * v_hat)
        parts = [blend_partner(cvecs, scores, sw["usable"], sw["pos"], t) for t in blend_taus]
        cols["sw_partner_c"].append(np.stack([np.einsum("nd,nd->n", p, v_hat) for p in parts], 1) if parts
                                    else np.zeros((m, 0)))
        cols["sw_partner_t"].append(np.stack([np.einsum("nd,nd->n", p, tvec) for p in parts], 1) if parts
                                    else np.zeros((m, 0)))
        hit_cols = (tg[np.maximum(ids, 0)] == tg[tgt][:, None]) & (ids >= 0)
        cand_cos = np.einsum("nkd,nd->nk", cvecs, tvec)
        cos_vhat = np.einsum("nd,nd->n", v_hat, tvec)
        in_sl = hit_cols.any(axis=1)
        cols["kind"].append(kind)
        cols["c"].append(c)
        cols["neighbour"].append(nb)
        cols["cos_emit"].append(np.einsum("nd,nd->n", _unit_rows(emit), tvec))
        cols["cos_vhat"].append(cos_vhat)
        cols["snap_hit"].append((nb >= 0) & (tg[np.maximum(nb, 0)] == tg[tgt]))
        cols["in_shortlist"].append(in_sl)
        cols["cos_oracle"].append(np.where(in_sl, np.where(hit_cols, cand_cos, -np.inf).max(axis=1), cos_vhat))
        cols["lane"].append(lane)
        has = sw["pos"] >= 0
        cols["sw_c"].append(np.where(has, sw["x"], -np.inf))  # the value the bands see (c + margin term)
        cols["sw_cos_star"].append(np.where(has, np.einsum("nd,nd->n", star, tvec), cos_vhat))
        cols["sw_cos_blend"].append(np.where(has, np.einsum("nd,nd->n", blend, tvec), cos_vhat))
        cols["sw_hit"].append(has & (tg[np.maximum(sw["neighbour"], 0)] == tg[tgt]))
        cols["sw_margin"].append(np.where(has, sw["margin"], 0.0))
        cols["fallback"].append(failed)
        if bar is not None:
            bar.update(m)
    if bar is not None:
        bar.close()
    fallbacks = cas.fallbacks
    cas.close()
    if not n:
        return {k: np.zeros(0) for k in cols}, fallbacks
    return {k: np.concatenate(v) for k, v in cols.items()}, fallbacks


def _summary(a: dict[str, np.ndarray], sel: np.ndarray) -> dict[str, Any]:
    n = int(sel.sum())
    out: dict[str, Any] = {"n": n}
    if not n:
        return out
    kind = a["kind"][sel]
    for k in KINDS:
        out[f"pct_{k}"] = float(np.mean(kind == k))
    snaps = kind == SNAP
    out["snap_precision"] = float(a["snap_hit"][sel][snaps].mean()) if snaps.any() else None
    out["cos_emitted"] = float(a["cos_emit"][sel].mean())
    out["cos_vhat"] = float(a["cos_vhat"][sel].mean())
    out["delta"] = out["cos_emitted"] - out["cos_vhat"]
    per: dict[str, Any] = {}
    for k in KINDS:
        m = kind == k
        if m.any():
            ce, cv = a["cos_emit"][sel][m], a["cos_vhat"][sel][m]
            per[k] = {"n": int(m.sum()), "cos_emitted": float(ce.mean()), "cos_vhat": float(cv.mean()),
                      "delta": float(ce.mean() - cv.mean()), "win_rate": float(np.mean(ce > cv + 1e-9))}
    out["by_kind"] = per
    return out


def sweep(a: dict[str, np.ndarray], snaps: tuple[float, ...] = SWEEP_SNAP,
          novels: tuple[float, ...] = SWEEP_NOVEL) -> list[dict[str, Any]]:
    """Mean cos(emitted, truth), decision mix and SNAP precision for every tau_novel < tau_snap pair."""
    c, rows = a["sw_c"], []
    base = float(a["cos_vhat"].mean()) if len(c) else float("nan")
    for ts in snaps:
        for tn in novels:
            if not tn < ts:
                continue
            snap = c >= ts
            nov = c <= tn
            cos = np.where(snap, a["sw_cos_star"], np.where(nov, a["cos_vhat"], a["sw_cos_blend"]))
            rows.append({"tau_snap": ts, "tau_novel": tn, "pct_SNAP": float(snap.mean()),
                         "pct_BLEND": float((~snap & ~nov).mean()), "pct_NOVEL": float(nov.mean()),
                         "snap_precision": float(a["sw_hit"][snap].mean()) if snap.any() else None,
                         "cos_emitted": float(cos.mean()), "delta_vs_vhat": float(cos.mean()) - base})
    return rows


def decode_report(a: dict[str, np.ndarray], fallbacks: dict[str, int], *, policy: Policy,
                  meta: dict[str, Any]) -> dict[str, Any]:
    n = len(a["kind"])
    allsel = np.ones(n, bool)
    lanes = sorted({str(x) for x in a["lane"]}) if n else []
    rep = {**meta, "n_samples": n, "policy": policy.as_dict(), "overall": _summary(a, allsel),
           "by_lane": {ln or "(none)": _summary(a, a["lane"].astype(str) == ln) for ln in lanes},
           "oracle_snap": {"rate": float(a["in_shortlist"].mean()) if n else 0.0,
                           "cos_emitted": float(a["cos_oracle"].mean()) if n else None},
           "fallbacks": fallbacks, "sweep": sweep(a) if n else []}
    best = max(rep["sweep"], key=lambda r: r["cos_emitted"]) if rep["sweep"] else None
    rep["sweep_best"] = best
    return rep


def format_decode(rep: dict[str, Any]) -> str:
    o = rep["overall"]
    lines = [f"decode eval: {rep['bank']} split={rep['split']} profile={rep['profile']} samples={rep['n_samples']} "
             f"lvm={rep['lvm']} retriever={rep['retriever']} K={rep['K']} k={rep['k']}"
             + (" never-back" if rep.get("never_back") else ""),
             f"fallbacks {rep['fallbacks']}",
             f"oracle-snap: target in shortlist {100 * rep['oracle_snap']['rate']:.2f}% -> mean cos "
             f"{rep['oracle_snap']['cos_emitted'] or float('nan'):.4f}"]
    head = f"{'lane':<14}{'n':>7}{'SNAP':>8}{'BLEND':>8}{'NOVEL':>8}{'snapP':>8}{'cos_emit':>10}{'cos_vhat':>10}" \
           f"{'delta':>9}  per kind: delta (win rate)"
    lines += [head, "-" * len(head)]
    for name, s in [("ALL", o)] + sorted(rep["by_lane"].items()):
        if not s.get("n"):
            continue
        sp = "-" if s["snap_precision"] is None else f"{100 * s['snap_precision']:.1f}%"
        kinds = "  ".join(f"{k} {v['delta']:+.4f} ({100 * v['win_rate']:.0f}%)" for k, v in s["by_kind"].items()
                          if k != NOVEL)
        lines.append(f"{name:<14}{s['n']:>7}{100 * s['pct_SNAP']:>7.1f}%{100 * s['pct_BLEND']:>7.1f}%"
                     f"{100 * s['pct_NOVEL']:>7.1f}%{sp:>8}{s['cos_emitted']:>10.4f}{s['cos_vhat']:>10.4f}"
                     f"{s['delta']:>+9.4f}  {kinds}")
    if rep.get("sweep_best"):
        b = rep["sweep_best"]
        lines.append(f"sweep best: tau_snap={b['tau_snap']} tau_novel={b['tau_novel']} cos={b['cos_emitted']:.4f} "
                     f"(delta {b['delta_vs_vhat']:+.4f} vs v_hat; SNAP {100 * b['pct_SNAP']:.1f}%)")
    return "\n".join(lines)


def sweep_table(rows: list[dict[str, Any]]) -> str:
    head = "tau_snap tau_novel   SNAP%  BLEND%  NOVEL%  snap_prec  cos_emitted  delta_vs_vhat"
    out = [head]
    for r in rows:
        sp = "      -" if r["snap_precision"] is None else f"{100 * r['snap_precision']:>8.2f}%"
        out.append(f"{r['tau_snap']:>8.2f} {r['tau_novel']:>9.2f} {100 * r['pct_SNAP']:>7.2f} "
                   f"{100 * r['pct_BLEND']:>7.2f} {100 * r['pct_NOVEL']:>7.2f} {sp:>10} {r['cos_emitted']:>12.4f} "
                   f"{r['delta_vs_vhat']:>+14.4f}")
    return "\n".join(out) + "\n"


def plot_sweep(rep: dict[str, Any], path: Any) -> None:
    """PNG: mean cos(emitted, truth) vs tau_snap, one line per tau_novel (like kNN-LM's lambda sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vecrag.fsutil import atomic_open

    rows = rep["sweep"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for tn in sorted({r["tau_novel"] for r in rows}):
        pts = [(r["tau_snap"], r["cos_emitted"]) for r in rows if r["tau_novel"] == tn]
        ax.plot(*zip(*pts, strict=True), marker=".", label=f"tau_novel={tn:.2f}")
    ax.axhline(rep["overall"].get("cos_vhat", float("nan")), color="k", ls="--", label="v_hat alone (NOVEL)")
    if rep["oracle_snap"]["cos_emitted"] is not None:
        ax.axhline(rep["oracle_snap"]["cos_emitted"], color="g", ls=":", label="oracle snap")
    ax.set_xlabel("tau_snap")
    ax.set_ylabel("mean cos(emitted, true next)")
    ax.set_title(f"{rep['profile']} / {rep['split']} ({rep['n_samples']} samples)")
    ax.legend(fontsize=7)
    tn0 = min({r["tau_novel"] for r in rows})
    pts = [r for r in rows if r["tau_novel"] == tn0]
    ax2.plot([r["tau_snap"] for r in pts], [100 * r["pct_SNAP"] for r in pts], marker=".", label="% SNAP")
    ax2.plot([r["tau_snap"] for r in pts], [100 * (r["snap_precision"] or 0) for r in pts], marker=".",
             label="SNAP precision %")
    ax2.set_xlabel("tau_snap")
    ax2.set_ylabel("%")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
