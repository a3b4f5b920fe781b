"""`vecrag calibrate`: thresholds from VAL with known answers, the file written / read back / refused, the cascade's
fusion weights chosen on VAL and reproducible, calibrated profiles refused without a calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_synthetic_bank
from vecrag.bank.sequences import make_samples
from vecrag.bank.store import Bank
from vecrag.cli import main
from vecrag.decode.calibration import (
    calibration_path,
    load_calibration,
    pick_fusion,
    threshold_for_precision,
    thresholds,
)
from vecrag.decode.profiles import load_profiles
from vecrag.errors import VecragError
from vecrag.eval.cascade_eval import fusion_grid
from vecrag.index.search import ExactTorchIndex
from vecrag.scoring.predictors import HeuristicPredictor

HEUR = ["--lvm", "heuristic:ewma", "--retriever", "heuristic:last"]


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Bank:
    b = make_synthetic_bank(tmp_path_factory.mktemp("cal") / "bank", n_articles=60, per_article=12,
                            lanes=["legal", "science", "history"])
    b.resplit(0, (0.4, 0.3, 0.3))
    return Bank.open(b.path)


def test_threshold_for_precision_known_answer() -> None:
    # sorted by c: hits at the top 4 of 10, then misses: precision at c >= 0.6 is 4/5
    c = np.array([0.95, 0.9, 0.85, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    hit = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    assert threshold_for_precision(c, hit, 1.0) == np.inf  # only 4 steps reach it: too few to trust
    assert threshold_for_precision(c, hit, 1.0, min_support=4) == 0.8
    assert threshold_for_precision(c, hit, 0.8) == 0.6
    assert threshold_for_precision(c, hit, 0.5) == 0.3  # 4 of 8
    assert threshold_for_precision(c, hit, 0.41) == 0.2  # 4 of 9 = 0.44
    assert threshold_for_precision(c, np.zeros(10, bool), 0.1) == np.inf  # never reached: never SNAP
    assert thresholds(c, np.zeros(10, bool), {"snap_precision": 0.1})["tau_snap"] == 1.0  # a cosine's top
    assert thresholds(c + 5, np.zeros(10, bool), {"snap_precision": 0.1})["tau_snap"] == 6.95  # beyond every x
    t = thresholds(c, hit, {"snap_precision": 0.8, "novel_share": 0.3})
    assert t["tau_snap"] == 0.6 and t["val_snap_share"] == 0.5 and t["val_snap_precision"] == 0.8
    assert t["tau_novel"] == pytest.approx(np.quantile(c, 0.3)) and t["val_novel_share"] == 0.3
    assert thresholds(c, hit, {"snap_precision": 0.8, "novel_share": 0.0})["tau_novel"] == -1.0


def test_pick_fusion_takes_only_a_clear_gain() -> None:
    n = 400
    base = np.zeros(n, bool)
    base[:100] = True
    tiny = base.copy()
    tiny[100] = True  # one query more: noise
    clear = base.copy()
    clear[100:160] = True

    def row(h: np.ndarray) -> dict:
        return {"Hit@10": h.mean(), "MRR@10": h.mean() / 2, "hits10": h}

    assert pick_fusion({(0.0, 0.0): row(base), (0.1, 0.0): row(tiny)}) == (0.0, 0.0)
    assert pick_fusion({(0.0, 0.0): row(base), (0.1, 0.0): row(tiny), (0.5, 0.05): row(clear)}) == (0.5, 0.05)


def test_calibrate_writes_reads_back_and_refuses(bank: Bank, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # a calibrated profile without a calibration: a clear error naming the command
    assert main(["generate", str(bank.path), "--prompt-ids", "0,1,2", "--steps", "2", *HEUR]) == 2
    err = capsys.readouterr().err
    assert "needs a calibration" in err and f"vecrag calibrate {bank.path} --lvm heuristic:ewma" in err
    assert main(["generate", str(bank.path), "--prompt-ids", "0,1,2", "--steps", "2", *HEUR,
                 "--profile", "greedy"]) == 0  # a profile that needs none runs
    capsys.readouterr()

    assert main(["calibrate", str(bank.path), *HEUR, "--quiet", "--max-articles", "10"]) == 0
    out = capsys.readouterr().out
    path = calibration_path(bank, "heuristic:ewma", "heuristic:last")
    assert path == Path(bank.path) / "eval" / "calibration-heuristic_ewma+heuristic_last.json"
    assert f"wrote {path}" in out and "conservative" in out and "first stage alone" in out
    cal = load_calibration(bank, "heuristic:ewma", "heuristic:last", required=True)
    assert cal["split"] == "val" and cal["n_samples"] == len(make_samples(bank, "val"))
    assert len(cal["samples"]["c"]) == len(cal["samples"]["hit"]) == cal["n_steps_with_candidates"] > 100
    # the intents keep their order on this bank: conservative grounds most, creative least
    prof = cal["profiles"]
    assert prof["conservative"]["tau_snap"] <= prof["neutral"]["tau_snap"] <= prof["creative"]["tau_snap"]
    assert prof["conservative"]["val_snap_share"] >= prof["creative"]["val_snap_share"]
    assert prof["neutral"]["val_snap_precision"] >= 0.4 - 1e-9
    # the cascade: chosen on VAL, never below the first stage there
    cas = cal["cascade"]
    assert cas["chosen_hit10"] >= cas["first_stage_hit10"]
    assert {"w_topic", "feedback"} == set(cal["generation"]["chosen"])
    # the policies follow the file: lanes shift their profile (legal grounds more)
    pols = load_profiles().policy_set("neutral", ["legal", "science"], cal)
    assert pols.default.tau_snap == prof["neutral"]["tau_snap"]
    assert pols.for_lane("legal").tau_snap <= pols.default.tau_snap
    # now neutral runs, and says where its thresholds came from
    assert main(["generate", str(bank.path), "--prompt-ids", "0,1,2", "--steps", "3", *HEUR, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["decoder"]["calibration"] == str(path) and rep["decoder"]["tau_snap"] == pols.default.tau_snap
    ids = [s["text_id"] for s in rep["steps"]]
    assert len(set(ids)) == 3 and not {0, 1, 2} & set(ids)
    # refused for another pair, and when damaged
    wrong = dict(cal, retriever="heuristic:mean")
    path.write_text(json.dumps(wrong))
    with pytest.raises(VecragError, match="another bank or model pair"):
        load_calibration(bank, "heuristic:ewma", "heuristic:last")
    path.write_text("{not json")
    with pytest.raises(VecragError, match="unreadable"):
        load_calibration(bank, "heuristic:ewma", "heuristic:last")
    path.unlink()
    assert load_calibration(bank, "heuristic:ewma", "heuristic:last") is None


def test_cascade_weights_reproduce_from_val(bank: Bank, tmp_path: Path) -> None:
    out = tmp_path / "cal.json"
    args = ["calibrate", str(bank.path), *HEUR, "--quiet", "--no-rollouts", "--out", str(out)]
    assert main(args) == 0
    first = json.loads(out.read_text())
    assert main(args) == 0
    assert json.loads(out.read_text())["cascade"] == first["cascade"]
    ewma, last = HeuristicPredictor("ewma", 0.5), HeuristicPredictor("last")
    grid = fusion_grid(bank, make_samples(bank, "val", max_samples=5000), ewma, last,
                       ExactTorchIndex(bank.vectors_f32()), w_lvm_grid=(0.0, 0.05, 0.1, 0.25, 0.5, 1.0),
                       lane_grid=(0.0, 0.02, 0.05))
    w, lam = pick_fusion(grid)
    assert first["cascade"]["chosen"] == {"w_tower": 1.0, "w_lvm": w, "lane_lambda": lam}
    assert first["cascade"]["chosen_hit10"] == pytest.approx(grid[(w, lam)]["Hit@10"])
    assert "generation" not in first


def test_calibration_measures_and_stores_the_pick_rule(bank: Bank, tmp_path: Path) -> None:
    """c and the margin are measured on the candidate the decoder will take: the cascade's best (margin >= 0, c at
    most the shortlist's best cosine) by default, the nearest to the prediction with --pick cos; the profiles decode
    with the stored rule, and a file without one is read as cos."""
    paths = {pick: tmp_path / f"{pick}.json" for pick in ("score", "cos")}
    for pick, out in paths.items():
        extra = [] if pick == "score" else ["--pick", "cos"]
        assert main(["calibrate", str(bank.path), *HEUR, "--quiet", "--no-rollouts", "--out", str(out), *extra]) == 0
    cal = {pick: json.loads(out.read_text()) for pick, out in paths.items()}
    assert cal["score"]["pick"] == "score" and cal["cos"]["pick"] == "cos"
    c_score, c_cos = (np.asarray(cal[p]["samples"]["c"]) for p in ("score", "cos"))
    assert len(c_score) == len(c_cos) and np.all(c_score <= c_cos + 1e-6) and np.any(c_score < c_cos - 1e-3)
    assert min(cal["score"]["samples"]["margin"]) >= 0.0 > min(cal["cos"]["samples"]["margin"])
    profiles = load_profiles()
    assert profiles.policy("neutral", calibration=cal["score"]).pick == "score"
    assert profiles.policy("neutral", calibration=cal["cos"]).pick == "cos"
    old = {k: v for k, v in cal["score"].items() if k != "pick"}
    assert profiles.policy("neutral", calibration=old).pick == "cos"
    assert profiles.policy("greedy").pick == "score"  # absolute profiles: the presets' rule


def test_bands_see_the_cascade_margin() -> None:
    """x = c + margin_weight * (chosen candidate's cascade score - best other score); decide and decide_batch agree."""
    from vecrag.decode.policy import Policy, decide, decide_batch

    e = np.eye(4)
    v = 0.8 * e[0] + 0.6 * e[1]
    cands = np.stack([e[0], e[1], e[2]])           # cos to v: 0.8, 0.6, 0
    ids = np.array([10, 11, 12])
    scores = np.array([0.9, 0.5, 0.2])             # the cascade's fused scores
    pol = Policy(tau_snap=1.1, tau_novel=0.5, margin_weight=1.0)
    d = decide(v, cands, ids, pol, scores=scores)
    assert d.neighbour_id == 10 and d.c == pytest.approx(0.8) and d.x == pytest.approx(0.8 + 0.4)
    assert d.kind == "SNAP"                        # c alone (0.8) would BLEND
    assert decide(v, cands, ids, pol).kind == "BLEND"  # no scores: x = c
    assert decide(v, cands, ids, Policy(tau_snap=0.92, tau_novel=0.5), scores=scores).kind == "BLEND"
    b = decide_batch(v[None], cands[None], ids[None], pol, scores=scores[None])
    assert b["kind"][0] == "SNAP" and b["margin"][0] == pytest.approx(0.4) and b["x"][0] == pytest.approx(1.2)
    with pytest.raises(VecragError, match="outside"):
        Policy(tau_snap=1.1, tau_novel=0.5)        # beyond a cosine without a margin term


def test_pick_margin_weight_prefers_the_informative_signal() -> None:
    from vecrag.decode.calibration import pick_margin_weight

    rng = np.random.default_rng(0)
    n = 1000
    hit = rng.random(n) < 0.15
    c = rng.normal(0.7, 0.05, n)                    # no information
    margin = np.where(hit, 0.05, 0.0) + rng.normal(0, 0.02, n)  # information
    w, rows = pick_margin_weight(c, margin, hit)
    assert w == 8.0 and rows[0]["margin_weight"] == 0.0 and rows[-1]["score"] > rows[0]["score"] + 0.2
    w, rows = pick_margin_weight(np.where(hit, 0.9, 0.5), rng.normal(0, 0.02, n), hit)  # c separates, margin is noise
    assert w == 0.0 and rows[0]["score"] == max(r["score"] for r in rows) > rows[-1]["score"]  # ties: smaller w


def test_fit_alpha_finds_the_best_weight_per_part_and_keeps_it_non_decreasing() -> None:
    """Known answers: where the candidate is the truth (cos 1) the best weight on it is 1, where it is orthogonal to the
    truth and v_hat is right it is 0; the dip is pooled away (non-decreasing in x)."""
    from vecrag.decode.calibration import blend_cos, fit_alpha

    n = 500
    x = np.linspace(0.0, 1.0, n)
    c = np.full(n, 0.5)                               # cos(v_hat, candidate)
    part = np.minimum((x * 5).astype(int), 4)         # five equal parts by x
    good = (part >= 3) & (part != 3)                  # the top part: the candidate is the truth
    cos_cand = np.where(good, 1.0, np.where(part == 3, 0.0, 0.5))
    cos_pred = np.where(good, 0.5, np.where(part == 3, 1.0, 0.5))  # part 3: v_hat is the truth
    fit = fit_alpha(x, c, cos_pred, cos_cand)
    best = [r["best_alpha"] for r in fit["bins"]]
    assert best[3] == 0.0 and best[4] == 1.0 and best[0] == best[1] == best[2] == 0.5  # equal partners: the middle
    a = [r["alpha"] for r in fit["bins"]]
    assert a == [0.375] * 4 + [1.0]  # 0.5, 0.5, 0.5, 0 pooled to their mean: the nearest non-decreasing weights
    assert [p[1] for p in fit["alpha_points"]] == a and fit["alpha_points"][0][0] == pytest.approx(0.099, abs=0.01)
    assert blend_cos(0.5, np.array(0.5), np.array(0.5), np.array(0.5)) == pytest.approx(0.5 / np.sqrt(0.75))
    with pytest.raises(VecragError, match="at least 10"):
        fit_alpha(x[:9], c[:9], cos_pred[:9], cos_cand[:9])


def test_choose_blend_takes_the_shortlist_mean_only_on_a_clear_gain() -> None:
    from vecrag.decode.calibration import choose_blend

    rng = np.random.default_rng(0)
    n = 2000
    x = rng.uniform(0.5, 1.0, n)
    cp = rng.normal(0.55, 0.1, n)
    pc = np.tile(rng.uniform(0.5, 0.8, n)[:, None], (1, 3))          # cos(v_hat, partner) per tau
    pt = np.stack([rng.normal(0.5, 0.1, n), rng.normal(0.6, 0.1, n), rng.normal(0.55, 0.1, n)], 1)
    got = choose_blend(x, cp, pc, pt, taus=(0.0, 0.05, 0.1))
    assert got["tau"] == 0.05 and [r["tau"] for r in got["grid"]] == [0.0, 0.05, 0.1]
    assert got["grid"][1]["cos"] > got["grid"][2]["cos"] > got["grid"][0]["cos"] and got["val_cos"] > cp.mean()
    noise = pt[:, :1] + rng.normal(0, 1e-4, (n, 3))                   # no partner better than n*: stay at 0
    assert choose_blend(x, cp, pc, noise, taus=(0.0, 0.05, 0.1))["tau"] == 0.0
    with pytest.raises(VecragError, match="start at blend_tau 0"):
        choose_blend(x, cp, pc, pt, taus=(0.05, 0.1, 0.2))


def test_calibrated_profiles_blend_as_fitted_and_older_files_as_before(bank: Bank, tmp_path: Path) -> None:
    out = tmp_path / "cal.json"
    assert main(["calibrate", str(bank.path), *HEUR, "--quiet", "--no-rollouts", "--out", str(out)]) == 0
    cal = json.loads(out.read_text())
    blend, s = cal["blend"], cal["samples"]
    assert len(s["cos_pred"]) == len(s["partner_c"]) == len(s["partner_t"]) == len(s["c"])
    assert blend["tau"] in [r["tau"] for r in blend["grid"]] and blend["val_cos"] >= blend["grid"][0]["cos"]
    pol = load_profiles().policy("neutral", calibration=cal)
    assert pol.blend_tau == blend["tau"] and [list(p) for p in pol.alpha_points] == blend["alpha_points"]
    # the stored samples reproduce the fitted weights
    from vecrag.decode.calibration import confidence, fit_alpha

    x, _ = confidence(s, cal["margin_weight"])
    assert fit_alpha(x, np.asarray(s["partner_c"]), np.asarray(s["cos_pred"]),
                     np.asarray(s["partner_t"]))["alpha_points"] == blend["alpha_points"]
    old = {k: v for k, v in cal.items() if k != "blend"}
    pol_old = load_profiles().policy("neutral", calibration=old)
    assert pol_old.blend_tau == 0.0 and [p[1] for p in pol_old.alpha_points] == [0.3, 0.7, 0.9]
