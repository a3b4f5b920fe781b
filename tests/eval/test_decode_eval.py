"""Decode and cascade evaluation on a hand-built bank whose answers are known in closed form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_back_bank, make_synthetic_bank
from vecrag.bank.sequences import make_samples
from vecrag.bank.store import Bank, EncoderInfo, write_bank
from vecrag.cli import main
from vecrag.decode.cascade import CascadeConfig
from vecrag.decode.policy import alpha
from vecrag.decode.profiles import load_profiles
from vecrag.eval.cascade_eval import run_cascade_eval
from vecrag.eval.decode_eval import collect, decode_report, drop_context, sweep
from vecrag.index.search import ExactTorchIndex
from vecrag.scoring.metrics import first_hit_rank
from vecrag.scoring.predictors import HeuristicPredictor

D = 32
COS = [0.95, 0.93, 0.90, 0.88, 0.5, 0.3]       # cos(context chunk, next chunk) per article
LANES = ["legal", "legal", "legal", "science", "science", "science", "science"]


def hand_bank(path: Path) -> Bank:
    """Articles 0-5: [u_a, t_a] with cos(u_a, t_a) = COS[a], mutually orthogonal; article 6: one distractor
    chunk d with cos(u_5, d) = 0.6 > cos(u_5, t_5), so t_5 is not in a k=1 shortlist."""
    e = np.eye(D)
    vecs, arts, pos = [], [], []
    for a, c in enumerate(COS):
        vecs += [e[2 * a], c * e[2 * a] + math.sqrt(1 - c * c) * e[2 * a + 1]]
        arts += [a, a]
        pos += [0, 1]
    vecs.append(0.6 * e[10] + 0.8 * e[20])
    arts.append(6)
    pos.append(0)
    texts = [f"a{a} p{p}" for a, p in zip(arts, pos, strict=True)]
    bank = write_bank(path, np.asarray(vecs, np.float32), article_ids=np.asarray(arts), positions=np.asarray(pos),
                      texts=texts, titles={a: f"A{a}" for a in range(7)}, chunk_lanes=[LANES[a] for a in arts],
                      encoder=EncoderInfo("hand", D), dtype="float32")
    bank.resplit(0, (0.0, 0.0, 1.0))  # every article held out
    return Bank.open(path)


def blend_cos(c: float) -> float:
    a = float(alpha(c))
    return (a + (1 - a) * c) / math.sqrt(a * a + (1 - a) ** 2 + 2 * a * (1 - a) * c)


def test_decode_eval_known_answers(tmp_path: Path) -> None:
    bank = hand_bank(tmp_path / "hand")
    samples = make_samples(bank, "test")
    assert samples.target.tolist() == [1, 3, 5, 7, 9, 11]
    last = HeuristicPredictor("last")
    policies = load_profiles().policy_set("gtr-t5", set(LANES))
    assert (policies.for_lane("legal").tau_snap, policies.for_lane("science").tau_snap) == (0.94, 0.92)
    cfg = CascadeConfig(K=5, k=1, timeout_ms=None)
    arrays, fb = collect(bank, samples, last, last, ExactTorchIndex(bank.vectors), policies, cfg)
    rep = decode_report(arrays, fb, policy=policies.default, meta={})
    # gtr-t5 legal lane (0.94/0.88): .95 SNAP, .93 BLEND, .90 BLEND; science (the profile's 0.92/0.85): .88 BLEND,
    # .5 NOVEL, .6 NOVEL
    assert arrays["kind"].tolist() == ["SNAP", "BLEND", "BLEND", "BLEND", "NOVEL", "NOVEL"]
    np.testing.assert_allclose(arrays["c"], [0.95, 0.93, 0.90, 0.88, 0.5, 0.6], atol=1e-6)
    o = rep["overall"]
    assert (o["pct_SNAP"], o["pct_BLEND"], o["pct_NOVEL"]) == (1 / 6, 3 / 6, 2 / 6)
    assert o["snap_precision"] == 1.0
    want = [1.0, blend_cos(0.93), blend_cos(0.90), blend_cos(0.88), 0.5, 0.3]
    np.testing.assert_allclose(arrays["cos_emit"], want, atol=1e-5)
    assert o["cos_vhat"] == pytest.approx(np.mean(COS), abs=1e-6)
    assert o["by_kind"]["BLEND"]["n"] == 3 and o["by_kind"]["BLEND"]["delta"] > 0
    assert rep["by_lane"]["legal"]["n"] == 3 and rep["by_lane"]["legal"]["pct_SNAP"] == pytest.approx(1 / 3)
    assert rep["by_lane"]["science"]["pct_NOVEL"] == pytest.approx(2 / 3)
    # oracle: the target is in the k=1 shortlist for 5 of 6 samples (the distractor beats t_5)
    assert rep["oracle_snap"]["rate"] == pytest.approx(5 / 6)
    assert rep["oracle_snap"]["cos_emitted"] == pytest.approx((5 + 0.3) / 6, abs=1e-6)
    # sweep: at (0.80, 0.70) the four c >= 0.8 snap (to the truth), .5 and .6 are NOVEL
    row = next(r for r in rep["sweep"] if (r["tau_snap"], r["tau_novel"]) == (0.8, 0.7))
    assert row["cos_emitted"] == pytest.approx((4 + 0.5 + 0.3) / 6, abs=1e-6)
    assert row["pct_SNAP"] == pytest.approx(4 / 6) and row["snap_precision"] == 1.0
    assert all(r["tau_novel"] < r["tau_snap"] for r in rep["sweep"])
    assert fb == {"error": 0, "timeout": 0, "empty": 0}

    casc = run_cascade_eval(bank, samples, last, last, ExactTorchIndex(bank.vectors), K=5, k=1)
    assert casc["rows"]["tower"]["Hit@1"] == pytest.approx(5 / 6)
    assert casc["rows"]["baseline:last"]["Hit@1"] == pytest.approx(5 / 6)


def test_oracle_rate_equals_fraction_of_targets_in_shortlist(tmp_path: Path) -> None:
    """Cross-check against first_hit_rank: with w_lvm = 0 and no lane bonus the shortlist is the index's top-k
    after dropping the context ids, so the oracle rate is Hit@k of the tower."""
    bank = make_synthetic_bank(tmp_path / "b", n_articles=40, lanes=["x", "y"])
    samples = make_samples(bank, "test")
    index = ExactTorchIndex(bank.vectors)
    tower, lvm = HeuristicPredictor("last"), HeuristicPredictor("ewma", 0.5)
    k, L = 5, 16
    cfg = CascadeConfig(K=50, k=k, w_tower=1.0, w_lvm=0.0, lane_lambda=0.0, timeout_ms=None)
    arrays, _ = collect(bank, samples, lvm, tower, index, load_profiles().policy_set("gtr-t5"), cfg)
    ctx = samples.context_ids(L)
    from vecrag.bank.sequences import gather_context

    c, m = gather_context(bank.vectors, ctx)
    _, ids = index.search(tower(c, m), k + L)
    r = first_hit_rank(ids, samples.target, ctx_ids=ctx, text_group=bank.text_group)
    assert arrays["in_shortlist"].mean() == pytest.approx(np.mean((r >= 0) & (r < k)))
    assert 0 < arrays["in_shortlist"].mean() < 1


def test_drop_context_compacts() -> None:
    ids = np.array([[4, 2, 9, -1, 7]])
    vecs = np.arange(5, dtype=np.float32).reshape(1, 5, 1)
    out_ids, out_vecs = drop_context(ids, vecs, np.array([[2, -1]]), 3)
    assert out_ids.tolist() == [[4, 9, 7]] and out_vecs[0, :, 0].tolist() == [0, 2, 4]


def test_sweep_empty_snap_has_no_precision() -> None:
    a = {"sw_c": np.array([0.1]), "sw_cos_star": np.array([0.2]), "sw_cos_blend": np.array([0.3]),
         "cos_vhat": np.array([0.4]), "sw_hit": np.array([False])}
    rows = sweep(a, (0.9,), (0.5,))
    assert rows[0]["snap_precision"] is None and rows[0]["cos_emitted"] == pytest.approx(0.4)


def test_eval_commands_write_outputs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bank = hand_bank(tmp_path / "hand")
    out = tmp_path / "out"
    args = [str(bank.path), "--lvm", "heuristic:last", "--retriever", "heuristic:last", "--out", str(out)]
    decode = ["eval", "decode", *args, "--profile", "conservative", "--k", "1", "--K", "5", "--json"]
    assert main(decode) == 2  # a calibrated profile and no calibration of (last, last) on this bank
    err = capsys.readouterr().err
    assert "'conservative' profile needs a calibration" in err and "vecrag calibrate" in err and "gtr-t5" in err
    assert not out.exists()
    # a hand-made calibration: 24 VAL steps c = 0.99 .. 0.76, the top 5 hits (see test_policy_profiles):
    # conservative snaps from 0.80 (legal lane: 0.76) and is never NOVEL
    cal = tmp_path / "cal.json"
    c = np.round(0.99 - 0.01 * np.arange(24), 2).tolist()
    cal.write_text(json.dumps({"kind": "vecrag-decode-calibration", "version": 1, "bank_n": bank.n,
                               "encoder": bank.encoder["name"], "samples": {"c": c, "hit": [True] * 5 + [False] * 19}}))
    assert main([*decode, "--calibration", str(cal)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["profile"] == "conservative" and rep["n_samples"] == 6 and rep["calibration"] == str(cal)
    assert (rep["policy"]["tau_snap"], rep["policy"]["tau_novel"]) == (pytest.approx(0.80), -1.0)
    assert rep["lane_policies"]["legal"]["tau_snap"] == pytest.approx(0.76)
    assert rep["context_ids"] == "removed from the shortlist"
    # legal .95 .93 .90 and science .88 SNAP (to the truth); science .5 and the distractor's .6 BLEND
    o = rep["overall"]
    assert (o["pct_SNAP"], o["pct_BLEND"], o["pct_NOVEL"]) == (4 / 6, 2 / 6, 0.0) and o["snap_precision"] == 1.0
    assert rep["fusion"] == {"w_tower": 1.0, "w_lvm": 0.0, "lane_lambda": 0.0}  # no cascade weights in it: stage 1
    for f in ("decode_eval-test-conservative.json", "decode_sweep-test-conservative.txt",
              "decode_sweep-test-conservative.png"):
        assert (out / f).stat().st_size > 0
    assert (out / "decode_sweep-test-conservative.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["eval", "cascade", *args, "--K", "5", "--k", "1", "--w-lvm-grid", "0,0.5"]) == 0
    assert "cascade" in capsys.readouterr().out
    saved = json.loads((out / "cascade_eval-test.json").read_text())
    assert set(saved["rows"]) >= {"baseline:last", "baseline:ewma:0.5", "tower", "lvm-query", "tower>fused",
                                  "tower>lane", "tower>lane(article)", "cascade"}
    assert "lane_accuracy" in saved
    rows = saved["rows"]  # w_lvm 0 re-ranks by the tower score alone: the tower's own order, the same hits
    assert {k: rows["tower>fused(w_lvm=0)"][k] for k in ("Hit@1", "Hit@5", "Hit@10", "MRR@10")} == \
        {k: rows["tower"][k] for k in ("Hit@1", "Hit@5", "Hit@10", "MRR@10")}
    assert "tower>fused(w_lvm=0.5)" in rows
    with pytest.raises(SystemExit) as e:  # a negative weight is refused by argparse
        main(["eval", "cascade", *args, "--w-lvm-grid", "0,-1"])
    assert e.value.code == 2 and "LVM weights must be >= 0" in capsys.readouterr().err


def test_cascade_never_back_drops_the_articles_earlier_chunks(tmp_path: Path) -> None:
    """Article 0 = c0..c3, context [c1], target c2. The query c1 ranks c1 (the context: dropped), then c0 (0.8,
    before the context), then the target c2 (0.6): a miss at k=1 under the default rule, a hit never going back."""
    import torch

    from vecrag.bank.sequences import Samples, before_target

    bank = make_back_bank(tmp_path / "b")
    samples = Samples(np.array([2]), np.array([0]), "test")
    last = HeuristicPredictor("last", context_len=1)
    index = ExactTorchIndex(bank.vectors)
    plain = run_cascade_eval(bank, samples, last, last, index, K=3, k=1)
    fwd = run_cascade_eval(bank, samples, last, last, index, K=3, k=1, never_back=True)
    assert {m: r["Hit@1"] for m, r in plain["rows"].items()} == {m: 0.0 for m in plain["rows"]}
    assert {m: r["Hit@1"] for m, r in fwd["rows"].items()} == {m: 1.0 for m in fwd["rows"]}
    assert fwd["never_back"] and "never going back" in fwd["hit_rules"] and not plain["never_back"]
    ids = np.array([[0, 1, 2, 3, 4, -1]])
    want = [[True, True, False, False, False, False]]
    assert before_target(ids, np.array([0]), np.array([2])).tolist() == want
    assert before_target(torch.from_numpy(ids), torch.tensor([0]), torch.tensor([2])).tolist() == want


def test_decode_eval_never_back_changes_the_shortlist(tmp_path: Path) -> None:
    """The bank of the cascade test above: the target c2 enters the k=1 shortlist only never going back."""
    from vecrag.bank.sequences import Samples

    bank = make_back_bank(tmp_path / "b")
    samples = Samples(np.array([2]), np.array([0]), "test")
    last = HeuristicPredictor("last", context_len=1)
    cfg = CascadeConfig(K=8, k=1, timeout_ms=None)
    policies = load_profiles().policy_set("gtr-t5")
    for never_back, want in ((False, 0), (True, 2)):
        arrays, _ = collect(bank, samples, last, last, ExactTorchIndex(bank.vectors), policies, cfg,
                            never_back=never_back)
        assert arrays["neighbour"].tolist() == [want] and arrays["in_shortlist"].tolist() == [want == 2]
