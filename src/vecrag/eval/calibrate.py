"""Measure a calibration on VAL (see :mod:`vecrag.decode.calibration` for what it is and how it is used).

Three measurements on VAL articles against the full bank, with the shared hit rules:

1. the cascade's fusion weights (teacher-forced): Hit@10 / MRR@10 at every (w_lvm, lane bonus) of a grid that
   holds the first stage alone (0, 0); the best is chosen (:func:`vecrag.decode.calibration.pick_fusion`);
2. with that cascade, every VAL step's ``c`` (the cosine the decoder's bands are applied to) and whether its
   candidate is the true next chunk (teacher-forced); profiles turn these into thresholds when they are loaded;
   with the cosines of the prediction and of each ``blend_tau``'s bank side to the truth, BLEND's bank side and
   weights (:func:`vecrag.decode.calibration.choose_blend`);
3. generation itself: rollouts from VAL prompts (the decoder `vecrag generate` uses, ``neutral`` profile) at
   every (topic weight, feedback) of a small grid; the best coverage of the true continuation is chosen among the
   points whose paired gain over (0, ``shown``) exceeds 1.96 standard errors over articles (ties go to the smaller
   weight, then to ``shown`` feedback).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vecrag.bank.sequences import Samples
from vecrag.bank.store import Bank
from vecrag.decode.calibration import (
    BLEND_TAU_GRID,
    KIND,
    LANE_GRID,
    VERSION,
    W_LVM_GRID,
    _identity,
    choose_blend,
    confidence,
    pick_fusion,
    pick_margin_weight,
    precision_curve,
    thresholds,
)
from vecrag.decode.cascade import CascadeConfig
from vecrag.decode.policy import Policy
from vecrag.decode.profiles import PolicySet, Profiles, intent_of
from vecrag.eval.cascade_eval import fusion_grid
from vecrag.eval.decode_eval import collect
from vecrag.eval.rollout_eval import make_prompts, rollout_articles, run_generator, summarise
from vecrag.scoring.predictors import Predictor

W_TOPIC_GRID = (0.0, 0.25, 0.5, 1.0)
FEEDBACK_GRID = ("shown", "emitted")


def generation_grid(bank: Bank, index: Any, lvm: Predictor, tower: Predictor, profiles: Profiles,
                    cal: dict[str, Any], cfg: CascadeConfig, *, split: str, P: int = 3, S: int = 8,
                    max_articles: int = 200, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """VAL rollouts of the neutral profile at every (w_topic, feedback); the chosen point and the grid."""
    from dataclasses import replace

    from vecrag.decode.generate import Decoder

    starts = rollout_articles(bank, split, P, S, max_articles=max_articles, seed=seed)
    if not len(starts):
        return {"chosen": {"w_topic": 0.0, "feedback": "shown"}, "grid": [], "n_articles": 0}
    prompts = make_prompts(bank, starts, P, S)
    lanes = sorted({str(x) for x in bank.lanes if x})
    policies = profiles.policy_set("neutral", lanes, cal) if "neutral" in profiles.names else None
    if policies is None or not profiles.is_calibrated("neutral"):
        policies = PolicySet("calibration", Policy(force="SNAP"), {})
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(prompts) * len(W_TOPIC_GRID) * len(FEEDBACK_GRID), desc="generation grid",
                   unit="rollout")
    grid: list[dict[str, Any]] = []
    per_article: dict[tuple[float, str], np.ndarray] = {}
    for w in W_TOPIC_GRID:
        for fb in FEEDBACK_GRID:
            dec = Decoder.for_bank(bank, index, lvm, tower, policies, replace(cfg, w_topic=w), feedback=fb)
            try:
                res = run_generator(bank, dec, prompts, S, bar.update if bar is not None else None)
            finally:
                dec.close()
            row = summarise(res)
            per_article[(w, fb)] = res["arrays"]["coverage"][:, 0]
            grid.append({"w_topic": w, "feedback": fb, "coverage": row["coverage"], "hit": row["hit"],
                         "forward": row["forward"], "cos": row["cos"]})
    if bar is not None:
        bar.close()
    base = per_article[(0.0, "shown")]

    def clear_gain(r: dict[str, Any]) -> bool:  # a paired gain over (0, shown) beyond 1.96 standard errors
        d = per_article[(r["w_topic"], r["feedback"])] - base
        return len(d) > 1 and d.mean() > 1.96 * float(d.std(ddof=1)) / np.sqrt(len(d))

    ok = [r for r in grid if (r["w_topic"], r["feedback"]) == (0.0, "shown") or clear_gain(r)]
    best = max(ok, key=lambda r: (round(r["coverage"], 9), round(r["cos"], 9), -r["w_topic"],
                                  r["feedback"] == "shown"))
    return {"chosen": {"w_topic": best["w_topic"], "feedback": best["feedback"]}, "grid": grid,
            "n_articles": len(prompts), "P": P, "S": S,
            "rule": "the best coverage among the points whose paired gain over (0, shown) exceeds 1.96 standard "
                    "errors over articles"}


def run_calibration(bank: Bank, samples: Samples, lvm: Predictor, tower: Predictor, index: Any, *,
                    lvm_spec: str, retriever_spec: str, profiles: Profiles, K: int = 500, k: int = 10,
                    w_lvm_grid: tuple[float, ...] = W_LVM_GRID, lane_grid: tuple[float, ...] = LANE_GRID,
                    rollouts: bool = True, max_articles: int = 200, progress: bool = False,
                    pick: str | None = None) -> dict[str, Any]:
    """The calibration dict (written as ``calibration.json``). ``pick`` (default: :class:`Policy`'s) is the rule
    that chooses each step's candidate; it is measured with and stored, and the profiles decode with it."""
    measure = Policy() if pick is None else Policy(pick=pick)
    has_lanes = bool(np.any(bank.lanes != ""))
    grid = fusion_grid(bank, samples, lvm, tower, index, K=K, w_lvm_grid=w_lvm_grid,
                       lane_grid=lane_grid if has_lanes else (0.0,), progress=progress)
    w_lvm, lam = pick_fusion(grid)
    cfg = CascadeConfig(K=K, k=k, w_tower=1.0, w_lvm=w_lvm, lane_lambda=lam, timeout_ms=None)
    arrays, fallbacks = collect(bank, samples, lvm, tower, index, PolicySet("calibration", measure, {}), cfg,
                                progress=progress, blend_taus=BLEND_TAU_GRID)
    c = np.asarray(arrays["sw_c"], np.float64)
    hit = np.asarray(arrays["sw_hit"], bool)
    ok = np.isfinite(c)
    # the stored (rounded) samples are what every later reader sees: measure everything on them
    steps = {"c": [round(float(v), 6) for v in c[ok]],
             "margin": [round(float(v), 6) for v in np.asarray(arrays["sw_margin"], np.float64)[ok]],
             "hit": [int(v) for v in hit[ok]],
             "cos_pred": [round(float(v), 6) for v in np.asarray(arrays["cos_vhat"], np.float64)[ok]]}
    partner_c = np.round(np.asarray(arrays["sw_partner_c"], np.float64)[ok], 6)
    partner_t = np.round(np.asarray(arrays["sw_partner_t"], np.float64)[ok], 6)
    c, margin, hit = (np.asarray(steps[k], np.float64) for k in ("c", "margin", "hit"))
    hit = hit.astype(bool)
    mw, mw_rows = pick_margin_weight(c, margin, hit)
    x, _ = confidence(steps, mw)
    blend = None
    if len(c) >= 10:
        blend = choose_blend(x, np.asarray(steps["cos_pred"]), partner_c, partner_t)
        j = BLEND_TAU_GRID.index(blend["tau"])  # the chosen partner's cosines: enough to re-fit its weights
        steps["partner_c"], steps["partner_t"] = partner_c[:, j].tolist(), partner_t[:, j].tolist()
    first = grid[(0.0, 0.0)]
    cal: dict[str, Any] = {
        "kind": KIND, "version": VERSION, "bank": str(bank.path), "bank_n": bank.n,
        "encoder": bank.encoder.get("name"), "lvm": _identity(lvm_spec), "retriever": _identity(retriever_spec),
        "split": samples.split, "n_samples": int(len(samples)), "n_steps_with_candidates": int(len(c)),
        "hit_rules": "context ids excluded; a chunk with the target's text counts as the target",
        "cascade": {"K": K, "k": k, "chosen": {"w_tower": 1.0, "w_lvm": w_lvm, "lane_lambda": lam},
                    "chosen_hit10": grid[(w_lvm, lam)]["Hit@10"], "first_stage_hit10": first["Hit@10"],
                    "grid": [{"w_lvm": w, "lane_lambda": la, "Hit@1": r["Hit@1"], "Hit@10": r["Hit@10"],
                              "MRR@10": r["MRR@10"]} for (w, la), r in sorted(grid.items())]},
        "fallbacks": fallbacks,
        "pick": measure.pick, "margin_weight": mw, "margin_grid": mw_rows,
        "c_quantiles": {f"{q:.2f}": float(np.quantile(c, q)) for q in np.linspace(0, 1, 21)} if len(c) else {},
        "precision_curve": precision_curve(x, hit),
        "samples": steps,
    }
    if blend is not None:
        cal["blend"] = blend
    if rollouts:
        cal["generation"] = generation_grid(bank, index, lvm, tower, profiles, cal, cfg, split=samples.split,
                                            max_articles=max_articles, progress=progress)
    cal["profiles"] = {}
    for name in profiles.names:
        if profiles.is_calibrated(name):
            cal["profiles"][name] = thresholds(x, hit, intent_of(profiles.profiles[name]))
    return cal


def format_calibration(cal: dict[str, Any]) -> str:
    cas = cal["cascade"]
    ch = cas["chosen"]
    lines = [f"calibration on {cal['split']}: {cal['bank']} ({cal['n_samples']} steps) lvm={cal['lvm']} "
             f"retriever={cal['retriever']}",
             f"cascade: w_lvm={ch['w_lvm']:g} lane_lambda={ch['lane_lambda']:g} -> Hit@10 "
             f"{100 * cas['chosen_hit10']:.2f}% (first stage alone {100 * cas['first_stage_hit10']:.2f}%)",
             f"candidate of each step: pick={cal.get('pick', 'cos')} (the profiles decode with it)"]
    q = cal["c_quantiles"]
    if q:
        lines.append("c (cos of the prediction to the step's candidate): " + "  ".join(
            f"q{float(k) * 100:.0f} {v:.3f}" for k, v in q.items() if k in ("0.05", "0.25", "0.50", "0.75", "0.95")))
    lines.append("confidence x = c + w * (cascade score margin): " + "  ".join(
        f"w={r['margin_weight']:g}: {100 * r['score']:.1f}%" for r in cal["margin_grid"])
        + f"  (mean SNAP precision of the top 5/10/20 % of VAL steps) -> w={cal['margin_weight']:g}")
    lines.append(f"{'snap at x >=':>14}{'share':>9}{'precision':>11}")
    for r in cal["precision_curve"][::3]:
        p = "-" if r["precision"] is None else f"{100 * r['precision']:.1f}%"
        lines.append(f"{r['tau']:>14.4f}{100 * r['share']:>8.1f}%{p:>11}")
    blend = cal.get("blend")
    if blend:
        lines.append("BLEND's bank side, by mean cos(blend, truth) on VAL with weights fitted for each (v_hat alone "
                     f"{blend['val_cos_vhat']:.4f}): " + "  ".join(
                         f"tau={r['tau']:g}: {r['cos']:.4f}" for r in blend["grid"])
                     + f" -> blend_tau={blend['tau']:g} ({'n* alone' if not blend['tau'] else 'the shortlist'})")
        lines.append("its weight a on the bank side (best mean cos(blend, truth) per part of the steps by x, made "
                     "non-decreasing):")
        lines.append(f"{'x (median)':>12}{'steps':>7}{'best a':>8}{'a':>6}{'cos blend':>11}{'cos v_hat':>11}")
        for r in blend["bins"]:
            lines.append(f"{r['x_median']:>12.4f}{r['n']:>7}{r['best_alpha']:>8.2f}{r['alpha']:>6.2f}"
                         f"{r['cos_best']:>11.4f}{r['cos_vhat']:>11.4f}")
    gen = cal.get("generation")
    if gen and gen["grid"]:
        lines.append(f"generation ({gen['n_articles']} {cal['split']} rollouts, prompt {gen['P']}, {gen['S']} steps, "
                     f"neutral): chosen w_topic={gen['chosen']['w_topic']:g} feedback={gen['chosen']['feedback']}")
        lines.append(f"{'w_topic':>9} {'feedback':<9}{'coverage':>9}{'hit':>7}{'fwd':>7}{'cos':>7}")
        for r in gen["grid"]:
            lines.append(f"{r['w_topic']:>9g} {r['feedback']:<9}{100 * r['coverage']:>8.1f}%{100 * r['hit']:>6.1f}%"
                         f"{100 * r['forward']:>6.1f}%{r['cos']:>7.3f}")
    lines.append(f"{'profile':<14}{'tau_snap':>10}{'tau_novel':>11}{'SNAP':>8}{'NOVEL':>8}{'snap prec.':>12}")
    for name, t in cal["profiles"].items():
        p = "-" if t["val_snap_precision"] is None else f"{100 * t['val_snap_precision']:.1f}%"
        lines.append(f"{name:<14}{t['tau_snap']:>10.4f}{t['tau_novel']:>11.4f}{100 * t['val_snap_share']:>7.1f}%"
                     f"{100 * t['val_novel_share']:>7.1f}%{p:>12}")
    return "\n".join(lines)
