"""Cascade fusion math on hand-made vectors, and every retrieval failure injected into the guard."""

from __future__ import annotations

import time

import numpy as np
import pytest

from vecrag.decode.cascade import Cascade, CascadeConfig, GuardedSearch, fuse, lane_bonus
from vecrag.decode.generate import Decoder
from vecrag.decode.policy import NOVEL
from vecrag.decode.profiles import load_profiles
from vecrag.errors import VecragError
from vecrag.index.search import ExactTorchIndex
from vecrag.scoring.predictors import HeuristicPredictor

D = 4


def unit(*xs: float) -> np.ndarray:
    v = np.asarray(xs, np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


# bank of 4 hand-made vectors; lanes a, b, a, -
BANK = np.stack([unit(1, 0, 0, 0), unit(0.9, 0.1, 0, 0), unit(0.6, 0, 0.8, 0), unit(0, 0, 0, 1)])
LANES = np.array([0, 1, 0, -1])


def test_fusion_math_and_lane_bonus() -> None:
    q = unit(1, 0, 0, 0)[None]
    v_hat = unit(0, 0, 1, 0)[None]
    idx = ExactTorchIndex(BANK)
    ids = np.array([[0, 1, 2, -1]])
    tower = BANK[[0, 1, 2]] @ q[0]
    lvm = BANK[[0, 1, 2]] @ v_hat[0]
    f = fuse(np.append(tower, -np.inf)[None], np.append(lvm, 0)[None], ids, w_tower=0.5, w_lvm=2.0)
    np.testing.assert_allclose(f[0, :3], 0.5 * tower + 2.0 * lvm, rtol=1e-6)
    assert f[0, 3] == -np.inf
    b = lane_bonus(ids, LANES, np.array([0]), 0.25)
    np.testing.assert_allclose(b, [[0.25, 0, 0.25, 0]])
    assert lane_bonus(ids, LANES, np.array([-1]), 0.25).sum() == 0  # no context lane -> no boost

    cas = Cascade(idx, BANK, CascadeConfig(K=3, k=3, w_tower=1.0, w_lvm=0.0, lane_lambda=0.0, timeout_ms=None),
                  lane_codes=LANES)
    assert cas.run(q, v_hat).ids[0].tolist() == [0, 1, 2]           # tower order
    cas.cfg.w_tower, cas.cfg.w_lvm = 0.0, 1.0
    r = cas.run(q, v_hat)
    assert r.ids[0].tolist() == [2, 0, 1]                            # LVM order (cos 0.8, 0, 0)
    np.testing.assert_allclose(r.scores[0], [0.8, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(r.vectors[0, 0], BANK[2])
    cas.cfg.w_tower, cas.cfg.w_lvm = 1.0, 1.0
    # fused: 0 -> 1.0, 1 -> 0.9939, 2 -> 0.6 + 0.8 = 1.4
    assert cas.run(q, v_hat).ids[0].tolist() == [2, 0, 1]
    cas.cfg.w_lvm, cas.cfg.lane_lambda = 0.0, 0.01
    assert cas.run(q, v_hat, np.array([1])).ids[0].tolist() == [1, 0, 2]  # lane b lifts id 1 over id 0
    assert cas.fallbacks == {"error": 0, "timeout": 0, "empty": 0}


def test_topic_term_reranks_only_when_weighted() -> None:
    """fused = w_tower * cos(q, cand) + w_topic * cos(topic, cand): the topic e2 lifts id 2 (cos 0.8)."""
    q, v_hat, topic = unit(1, 0, 0, 0)[None], unit(0, 1, 0, 0)[None], unit(0, 0, 1, 0)[None]
    assert CascadeConfig().w_topic == 0.0
    cas = Cascade(ExactTorchIndex(BANK), BANK,
                  CascadeConfig(K=3, k=3, w_tower=1.0, w_lvm=0.0, lane_lambda=0.0, timeout_ms=None), lane_codes=LANES)
    assert cas.run(q, v_hat, topic=topic).ids[0].tolist() == [0, 1, 2]  # w_topic 0: the topic is ignored
    cas.cfg.w_topic = 1.0
    assert cas.run(q, v_hat).ids[0].tolist() == [0, 1, 2]               # no topic given: nothing to add
    cas.cfg.w_topic = 0.25
    r = cas.run(q, v_hat, topic=topic)                                   # id 2: 0.6 + 0.25 * 0.8 = 0.8, still last
    assert r.ids[0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(r.scores[0], [1.0, 0.9 / np.hypot(0.9, 0.1), 0.8], atol=1e-6)
    cas.cfg.w_topic = 1.0
    r = cas.run(q, v_hat, topic=topic)
    assert r.ids[0].tolist() == [2, 0, 1]
    np.testing.assert_allclose(r.scores[0], [1.4, 1.0, 0.9 / np.hypot(0.9, 0.1)], atol=1e-6)


class RaisingIndex:
    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise RuntimeError("index exploded")


class SleepingIndex:
    def __init__(self, inner: object, sleep_s: float):
        self.inner, self.sleep_s = inner, sleep_s

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(self.sleep_s)
        return self.inner.search(q, k)


class EmptyIndex:
    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)


def _decoder(index: object, timeout_ms: float | None = 50.0) -> Decoder:
    ps = load_profiles().policy_set("gtr-t5")
    return Decoder(BANK, ["a", "b", "c", "d"], None, index, HeuristicPredictor("last"),
                   HeuristicPredictor("last"), ps, CascadeConfig(K=3, k=2, timeout_ms=timeout_ms))


@pytest.mark.parametrize(("index", "reason"), [
    (RaisingIndex(), "error"),
    (SleepingIndex(ExactTorchIndex(BANK), 0.25), "timeout"),
    (EmptyIndex(), "empty"),
])
def test_each_failure_gives_novel_and_is_counted(index: object, reason: str) -> None:
    dec = _decoder(index, timeout_ms=30.0)
    try:
        t0 = time.perf_counter()
        steps = list(dec.generate([BANK[0]], 3))
        elapsed = time.perf_counter() - t0
    finally:
        dec.close()
    assert [s.decision.kind for s in steps] == [NOVEL] * 3
    assert all(s.decision.fallback == reason and s.text is None for s in steps)
    np.testing.assert_allclose(steps[0].decision.vector, BANK[0], atol=1e-6)  # NOVEL keeps v_hat (last)
    assert dec.fallbacks[reason] == 3 and sum(dec.fallbacks.values()) == 3
    if reason == "timeout":
        assert elapsed < 3 * 0.25  # bounded waits: never blocked for the full stale searches


def test_timeout_recovers_once_the_index_is_fast_again() -> None:
    slow = SleepingIndex(ExactTorchIndex(BANK), 0.2)
    g = GuardedSearch(slow, timeout_ms=20.0)
    try:
        assert g.search(BANK[:1], 2)[2] == ["timeout"]
        slow.sleep_s = 0.0
        time.sleep(0.25)  # the stale search finishes in the worker
        scores, ids, reasons = g.search(BANK[:1], 2)
        assert reasons == [""] and ids[0, 0] == 0
        assert g.counts["timeout"] == 1
    finally:
        g.close()


def test_healthy_decoder_snaps_and_reports_latency() -> None:
    dec = _decoder(ExactTorchIndex(BANK), timeout_ms=None)
    try:
        st = dec.step([BANK[1]], "")
    finally:
        dec.close()
    assert st.decision.kind == "SNAP" and st.text_id == 1 and st.text == "b" and not st.approx
    assert set(st.latency_ms) == {"lvm", "tower", "search", "rerank", "decide", "total"}
    assert dec.fallbacks == {"error": 0, "timeout": 0, "empty": 0}


def test_bad_cascade_config() -> None:
    with pytest.raises(VecragError, match="cannot exceed"):
        CascadeConfig(K=5, k=10)
    with pytest.raises(VecragError, match="timeout"):
        CascadeConfig(timeout_ms=0)


def test_lane_centroids_use_only_the_chosen_chunks_and_predict_from_the_context() -> None:
    from vecrag.bank.lanes import lane_centroids, predict_lanes

    e = np.eye(3, dtype=np.float32)
    vectors = np.stack([e[0], e[0], e[1], e[1], e[2]]).astype(np.float16)
    codes = np.array([0, 0, 1, 1, -1])
    use = np.array([True, True, True, False, True])  # chunk 3 (a held-out article) must not shape lane 1
    vectors[3] = e[2]
    cent = lane_centroids(vectors, codes, use, block=2)  # blocks of 2: the accumulation crosses blocks
    np.testing.assert_allclose(cent, e[:2], atol=1e-6)
    ctx = np.stack([np.stack([e[1], 0.5 * e[0]]), np.stack([e[0], e[0]]), np.zeros((2, 3), np.float32)])
    mask = np.array([[True, True], [True, False], [False, False]])
    assert predict_lanes(ctx, mask, cent).tolist() == [1, 0, -1]
    assert predict_lanes(ctx, mask, np.zeros((0, 3), np.float32)).tolist() == [-1, -1, -1]


def test_prompt_lane_comes_from_the_lane_classifier_when_given() -> None:
    """The rule `eval cascade` measures: the prompt's mean vector against the lane classifier (rows in sorted
    lane-name order). Without a classifier: the lane of the bank chunk nearest to the last prompt vector."""
    lanes = np.array(["x", "x", "y", "y"], dtype=object)
    ps = load_profiles().policy_set("gtr-t5")
    clf = np.stack([BANK[3], BANK[0]]).astype(np.float32)  # "x" <- row 0 = BANK[3], "y" <- row 1 = BANK[0]
    clf /= np.linalg.norm(clf, axis=1, keepdims=True)
    for classifier, want in ((clf, "y"), (None, "x")):
        dec = Decoder(BANK, ["a", "b", "c", "d"], lanes, ExactTorchIndex(BANK), HeuristicPredictor("last"),
                      HeuristicPredictor("last"), ps, CascadeConfig(K=3, k=2), lane_classifier=classifier)
        try:
            assert dec.initial_lane([BANK[0]]) == want  # nearest chunk BANK[0] is in lane "x"
        finally:
            dec.close()
