"""Band edges, alpha knots, the near-duplicate rule and policy validation (vecrag.decode.policy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vecrag.decode.policy import (
    BLEND,
    NOVEL,
    SNAP,
    Policy,
    alpha,
    blend_partner,
    classify,
    decide,
    decide_batch,
)
from vecrag.errors import VecragError

D = 8


def cand(c: float, axis: int = 1) -> np.ndarray:
    """A unit vector whose cosine to e0 is exactly c (float64)."""
    v = np.zeros(D)
    v[0] = c
    v[axis] = math.sqrt(1.0 - c * c)
    return v


E0 = np.eye(D)[0]


@pytest.mark.parametrize(("c", "kind"), [
    (0.92, SNAP), (np.nextafter(0.92, 0), BLEND), (0.85, NOVEL), (np.nextafter(0.85, 1), BLEND),
    (1.0, SNAP), (-1.0, NOVEL), (0.9, BLEND),
])
def test_band_edges_classify_and_decide(c: float, kind: str) -> None:
    p = Policy()
    assert classify(c, p) == kind
    d = decide(E0, cand(c)[None], np.array([7]), p)
    assert d.kind == kind and d.c == pytest.approx(c, abs=0) and d.neighbour_id == 7


def test_snap_emits_bank_vector_novel_emits_prediction() -> None:
    p = Policy()
    n = cand(0.95)
    d = decide(E0, n[None], np.array([3]), p)
    assert d.kind == SNAP and d.alpha == 1.0
    np.testing.assert_allclose(d.vector, n, atol=1e-7)
    d = decide(E0, cand(0.5)[None], np.array([3]), p)
    assert d.kind == NOVEL and d.alpha == 0.0
    np.testing.assert_allclose(d.vector, E0, atol=1e-7)


@pytest.mark.parametrize(("c", "a"), [
    (0.86, 0.3), (0.91, 0.7), (0.95, 0.9), (0.885, 0.5), (0.93, 0.8), (0.80, 0.3), (0.5, 0.3), (0.99, 0.9),
    (1.0, 0.9),
])
def test_alpha_knots_and_clamps(c: float, a: float) -> None:
    assert alpha(c) == pytest.approx(a, abs=1e-12)


def test_blend_vector_is_renormalised_mix() -> None:
    p = Policy()
    n = cand(0.9)
    d = decide(E0, n[None], np.array([5]), p)
    a = 0.3 + (0.9 - 0.86) / 0.05 * 0.4
    assert d.kind == BLEND and d.alpha == pytest.approx(a)
    want = a * n + (1 - a) * E0
    np.testing.assert_allclose(d.vector, want / np.linalg.norm(want), atol=1e-6)
    assert np.linalg.norm(d.vector) == pytest.approx(1.0, abs=1e-6)


def test_picks_max_cosine_and_ignores_padding() -> None:
    vecs = np.stack([cand(0.5, 1), cand(0.93, 2), cand(0.99, 3)])
    d = decide(E0, vecs, np.array([1, 2, -1]), Policy())
    assert d.neighbour_id == 2 and d.kind == SNAP and d.c == pytest.approx(0.93)
    d = decide(E0, vecs, np.array([-1, -1, -1]), Policy())
    assert d.kind == NOVEL and d.fallback == "empty" and d.neighbour_id == -1


def test_near_dup_skips_recent_and_falls_to_next_best() -> None:
    p = Policy()
    vecs = np.stack([cand(0.99, 1), cand(0.93, 2)])
    ids = np.array([10, 11])
    assert decide(E0, vecs, ids, p, recent_ids=[]).neighbour_id == 10
    d = decide(E0, vecs, ids, p, recent_ids=[10])
    assert (d.kind, d.neighbour_id, d.skipped_ids) == (SNAP, 11, (10,))
    assert d.c == pytest.approx(0.93) and d.c_max == pytest.approx(0.99)
    # next-best in the BLEND band -> BLEND with it
    d = decide(E0, np.stack([cand(0.99, 1), cand(0.9, 2)]), ids, p, recent_ids=[10])
    assert (d.kind, d.neighbour_id) == (BLEND, 11)
    # nothing else -> NOVEL
    d = decide(E0, cand(0.99)[None], np.array([10]), p, recent_ids=[10])
    assert d.kind == NOVEL and d.neighbour_id == -1 and d.skipped_ids == (10,)


def test_near_dup_threshold_is_strict() -> None:
    p = Policy()
    d = decide(E0, cand(0.98)[None], np.array([10]), p, recent_ids=[10])
    assert d.kind == SNAP and d.neighbour_id == 10  # exactly 0.98 is not > 0.98
    d = decide(E0, cand(np.nextafter(0.98, 1))[None], np.array([10]), p, recent_ids=[10])
    assert d.kind == NOVEL


def test_near_dup_window_boundary() -> None:
    p = Policy()
    v = cand(0.99)[None]
    ids = np.array([10])
    in_window = [10] + [-1] * 7          # used exactly 8 steps ago: still inside the window of 8
    out_window = [10] + [-1] * 8         # 9 steps ago: outside
    assert decide(E0, v, ids, p, recent_ids=in_window).kind == NOVEL
    assert decide(E0, v, ids, p, recent_ids=out_window).kind == SNAP
    assert decide(E0, v, ids, p.replace(near_dup_window=0), recent_ids=[10]).kind == SNAP


def random_shortlists(seed: int, n: int, k: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray, np.ndarray]:
    """n unit predictions, k unit candidates each at varied distances, candidate ids (every 7th row's last is
    padding) and the generator, for the caller's further draws."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, D))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cv = v[:, None, :] + rng.uniform(0.05, 0.6, (n, k, 1)) * rng.standard_normal((n, k, D))
    cv /= np.linalg.norm(cv, axis=2, keepdims=True)
    ids = rng.integers(0, 20, (n, k))
    ids[::7, -1] = -1
    return rng, v, cv, ids


def test_decide_batch_matches_decide() -> None:
    n, k = 40, 6
    rng, v, cv, ids = random_shortlists(0, n, k)
    recent = rng.integers(-1, 20, (n, 10))
    p = Policy(near_dup=0.95)
    out = decide_batch(v, cv, ids, p, recent)
    kinds = set()
    for i in range(n):
        d = decide(v[i], cv[i], ids[i], p, recent[i].tolist())
        kinds.add(d.kind)
        assert out["kind"][i] == d.kind and out["neighbour"][i] == d.neighbour_id
        assert out["c"][i] == pytest.approx(d.c) and out["alpha"][i] == pytest.approx(d.alpha)
        np.testing.assert_allclose(out["vector"][i], d.vector, atol=1e-5)
    assert kinds == {SNAP, BLEND, NOVEL}


def test_pick_score_takes_the_cascade_best_and_c_stays_its_cosine() -> None:
    """pick=score: the candidate is the best cascade score, not the chunk nearest v_hat; the bands see its cosine."""
    cands = np.stack([cand(0.95, 1), cand(0.88, 2), cand(0.5, 3)])
    ids = np.array([10, 11, 12])
    scores = np.array([0.4, 0.7, 0.9])           # the cascade ranks the far chunk first
    d = decide(E0, cands, ids, Policy(), scores=scores)
    assert Policy().pick == "score"
    assert (d.kind, d.neighbour_id, d.c, d.c_max) == (NOVEL, 12, pytest.approx(0.5), pytest.approx(0.95))
    d = decide(E0, cands, ids, Policy(), scores=np.array([0.4, 0.9, 0.7]))
    assert (d.kind, d.neighbour_id, d.c) == (BLEND, 11, pytest.approx(0.88))
    mix = 0.46 * cand(0.88, 2) + 0.54 * E0       # a(0.88) = 0.3 + 0.4 * (0.88 - 0.86) / (0.91 - 0.86)
    assert d.alpha == pytest.approx(0.46)
    np.testing.assert_allclose(d.vector, mix / np.linalg.norm(mix), atol=1e-6)
    d = decide(E0, cands, ids, Policy(pick="cos"), scores=scores)
    assert (d.kind, d.neighbour_id, d.c) == (SNAP, 10, pytest.approx(0.95))
    d = decide(E0, cands, ids, Policy())          # without scores: the candidate nearest v_hat
    assert (d.kind, d.neighbour_id) == (SNAP, 10)


def test_pick_score_near_dup_skips_to_the_next_best_score() -> None:
    cands = np.stack([cand(0.99, 1), cand(0.6, 2), cand(0.93, 3)])
    ids = np.array([10, 11, 12])
    scores = np.array([0.9, 0.8, 0.1])
    d = decide(E0, cands, ids, Policy(), recent_ids=[10], scores=scores)
    assert (d.kind, d.neighbour_id, d.skipped_ids, d.c) == (NOVEL, 11, (10,), pytest.approx(0.6))
    d = decide(E0, cands, ids, Policy(pick="cos"), recent_ids=[10], scores=scores)
    assert (d.kind, d.neighbour_id, d.skipped_ids) == (SNAP, 12, (10,))
    d = decide(E0, cands, np.array([10, -1, 12]), Policy(), recent_ids=[10], scores=np.array([0.9, -np.inf, 0.1]))
    assert (d.kind, d.neighbour_id) == (SNAP, 12)  # padding never chosen, whatever its score


@pytest.mark.parametrize(("pick", "blend_tau"), [("score", 0.0), ("cos", 0.0), ("score", 0.05), ("cos", 0.1)])
@pytest.mark.parametrize("margin_weight", [0.0, 2.0])
def test_decide_batch_matches_decide_with_scores(pick: str, margin_weight: float, blend_tau: float) -> None:
    n, k = 60, 6
    rng, v, cv, ids = random_shortlists(1, n, k)
    ids[5] = -1                                   # a row with no candidate
    scores = rng.uniform(0, 1, (n, k))
    scores[ids < 0] = -np.inf
    recent = rng.integers(-1, 20, (n, 10))
    p = Policy(near_dup=0.95, pick=pick, margin_weight=margin_weight, blend_tau=blend_tau,
               tau_snap=0.92 + margin_weight * 0.3, tau_novel=0.85)
    out = decide_batch(v, cv, ids, p, recent, scores)
    kinds, differ = set(), 0
    for i in range(n):
        d = decide(v[i], cv[i], ids[i], p, recent[i].tolist(), scores=scores[i])
        kinds.add(d.kind)
        assert out["kind"][i] == d.kind and out["neighbour"][i] == d.neighbour_id
        assert out["c"][i] == pytest.approx(d.c, nan_ok=True) and out["alpha"][i] == pytest.approx(d.alpha)
        assert out["x"][i] == pytest.approx(d.x, nan_ok=True)
        np.testing.assert_allclose(out["vector"][i], d.vector, atol=1e-5)
        differ += d.neighbour_id != decide(v[i], cv[i], ids[i], p.replace(pick="cos" if pick == "score" else "score"),
                                           recent[i].tolist(), scores=scores[i]).neighbour_id
    assert kinds == {SNAP, BLEND, NOVEL} and differ > n // 4  # the two rules really choose differently here


def test_force_overrides_the_bands_but_not_the_near_dup_rule() -> None:
    greedy, lvm_only = Policy(force=SNAP), Policy(force=NOVEL)
    assert classify(np.array([-0.5, 0.5, 0.99, np.nan]), greedy).tolist() == [SNAP, SNAP, SNAP, NOVEL]
    assert classify(1.0, lvm_only) == NOVEL
    d = decide(E0, np.stack([cand(0.99, 1), cand(0.3, 2)]), np.array([10, 11]), greedy, recent_ids=[10])
    assert (d.kind, d.neighbour_id, d.c, d.alpha) == (SNAP, 11, pytest.approx(0.3), 1.0)
    np.testing.assert_allclose(d.vector, cand(0.3, 2), atol=1e-7)  # the bank vector, however far
    d = decide(E0, cand(0.99)[None], np.array([10]), lvm_only)
    assert d.kind == NOVEL and d.neighbour_id == 10 and d.c == pytest.approx(0.99)
    np.testing.assert_allclose(d.vector, E0, atol=1e-7)
    v = np.stack([E0, E0])
    cv = np.stack([np.stack([cand(0.99, 1), cand(0.3, 2)])] * 2)
    out = decide_batch(v, cv, np.array([[10, 11], [10, 11]]), greedy, np.array([[10], [-1]]))
    assert out["kind"].tolist() == [SNAP, SNAP] and out["neighbour"].tolist() == [11, 10]
    assert Policy().force == "" and greedy.replace(tau_snap=0.95).force == SNAP


@pytest.mark.parametrize(("kw", "msg"), [
    ({"tau_snap": 0.85, "tau_novel": 0.85}, "tau_novel"),
    ({"tau_snap": 0.8, "tau_novel": 0.9}, "must be < tau_snap"),
    ({"tau_snap": 1.2}, "outside"),
    ({"tau_novel": -1.5}, "outside"),
    ({"near_dup": 2.0}, "near_dup"),
    ({"alpha_points": ((0.86, 1.3),)}, r"outside \[0, 1\]"),
    ({"alpha_points": ((0.9, 0.3), (0.86, 0.7))}, "strictly increasing"),
    ({"alpha_points": ((0.86, 0.7), (0.9, 0.3))}, "must not decrease"),
    ({"alpha_points": ()}, "empty"),
    ({"near_dup_window": -1}, "near_dup_window"),
    ({"K": 0}, "K must"),
    ({"tau_snap": float("nan")}, "finite"),
    ({"force": "snap"}, "force must be"),
    ({"pick": "nearest"}, "pick must be one of score, cos"),
])
def test_invalid_policies_are_rejected(kw: dict, msg: str) -> None:
    with pytest.raises(VecragError, match=msg):
        Policy(**kw)


def test_blend_partner_averages_the_shortlist_by_softmax_of_scores() -> None:
    """blend_tau 0: n* itself; above 0: the unit mean of the usable candidates, weights softmax(score / tau); a
    recent near-duplicate (not usable) and padding take no part; decide blends with that mean."""
    e = np.eye(D)
    cands = np.stack([e[1], e[2], e[3]])
    tau = 0.05
    scores = np.array([0.9, 0.9 - tau * math.log(3), -np.inf])     # weights 3 : 1 : 0
    usable = np.array([[True, True, False]])
    got = blend_partner(cands[None], scores[None], usable, np.array([0]), tau)[0]
    want = 3 * e[1] + e[2]
    np.testing.assert_allclose(got, want / np.linalg.norm(want), atol=1e-12)
    np.testing.assert_allclose(blend_partner(cands[None], scores[None], usable, np.array([1]), 0.0)[0], e[2])
    np.testing.assert_allclose(blend_partner(cands[None], None, usable, np.array([1]), tau)[0], e[2])  # no scores
    # in decide: v_hat at cos 0.6 to both candidates; the near-duplicate of a recent chunk is left out of the mean
    v = 0.6 * e[1] + 0.6 * e[2] + math.sqrt(1 - 0.72) * e[0]
    dup = v.copy()                                               # cos 1 to v_hat, used last step
    pol = Policy(tau_snap=0.95, tau_novel=0.1, alpha_points=((0.5, 0.5),), blend_tau=tau)
    d = decide(v, np.stack([e[1], e[2], dup]), np.array([10, 11, 12]), pol, recent_ids=[12],
               scores=np.array([0.9, 0.9 - tau * math.log(3), 0.95]))
    assert (d.kind, d.neighbour_id, d.skipped_ids, d.alpha) == (BLEND, 10, (12,), 0.5)
    mix = 0.5 * want / np.linalg.norm(want) + 0.5 * v
    np.testing.assert_allclose(d.vector, mix / np.linalg.norm(mix), atol=1e-6)
    with pytest.raises(VecragError, match="blend_tau"):
        Policy(blend_tau=-0.1)
