"""Curriculum schedule parser (0-based epochs by default), every rejection, and the mining filters."""

from __future__ import annotations

import numpy as np
import pytest

from vecrag.errors import VecragError
from vecrag.train.mining.curriculum import Curriculum, FilterConfig, Phase, select_negatives

SEED = "0-5:none;6-10:8@0.82-0.92;11-30:16@0.84-0.96"


def test_parse_seed_schedule_zero_based():
    c = Curriculum.parse(SEED)
    assert [p.first for p in c.phases] == [0, 6, 11] and c.max_neg == 16 and c.mines
    assert c.phase_for(0) is None and c.phase_for(5) is None
    assert c.phase_for(6) == Phase(6, 10, 8, 0.82, 0.92)
    assert c.phase_for(10).n_neg == 8 and c.phase_for(11).n_neg == 16 and c.phase_for(30).n_neg == 16
    assert c.phase_for(99).n_neg == 16  # after the last phase: keep the last phase


def test_parse_one_based_shifts_to_trainer_epochs():
    c = Curriculum.parse("1-2:none;3-4:4@0.8-0.9", base=1)
    assert c.phase_for(1) is None and c.phase_for(2).n_neg == 4  # string epoch 3 = Trainer epoch 2
    with pytest.raises(VecragError, match="epochs count from 1"):
        Curriculum.parse("0-2:none;3-4:4@0.8-0.9", base=1)
    with pytest.raises(VecragError, match="gap"):
        Curriculum.parse("2-4:none", base=1)


def test_single_epoch_phase_spaces_and_empty():
    c = Curriculum.parse(" 0 : none ; 1-3 : 4@-0.5-0.9 ")
    assert c.phase_for(2) == Phase(1, 3, 4, -0.5, 0.9)
    assert Curriculum.parse("").phase_for(3) is None and not Curriculum.parse("").mines


@pytest.mark.parametrize("text,fragment", [
    ("0-5", "malformed phase '0-5'"),
    ("0-5:nine", "malformed negatives spec 'nine'"),
    ("0-5:8@0.8", "malformed negatives spec '8@0.8'"),
    ("0-5:8@0.8-0.9;;6-7:none", "empty phase"),
    ("1-5:none", "gap"),                               # must start at epoch 0
    ("0-5:none;7-9:8@0.8-0.9", "gap in curriculum before phase '7-9:8@0.8-0.9'"),
    ("0-5:none;5-9:8@0.8-0.9", "overlap in curriculum before phase '5-9:8@0.8-0.9'"),
    ("0-5:none;3-9:8@0.8-0.9", "overlap"),
    ("0-5:8@0.9-0.8", "lo > hi"),
    ("0-5:8@0.8-1.2", "outside \\[-1, 1\\]"),
    ("0-5:8@-1.5-0.2", "outside \\[-1, 1\\]"),
    ("0-5:0@0.1-0.2", "asks for 0 negatives"),
    ("5-2:none", "before first epoch"),
    ("0-5:8@0.8.1-0.9", "bad band"),
    ("a-b:none", "malformed phase 'a-b:none'"),
])
def test_rejects_bad_schedules_naming_the_bad_part(text, fragment):
    with pytest.raises(VecragError, match=fragment):
        Curriculum.parse(text)


def test_select_negatives_filters_band_and_stats():
    # one sample, cos(q, pos) = 0.8; candidates sorted by cos to the query
    ids = np.array([[10, 11, 12, 13, 14, 15, -1]])
    cand_q = np.array([[0.90, 0.85, 0.70, 0.60, 0.50, 0.10, -np.inf]])
    cand_pos = np.array([[0.50, 0.20, 0.99, 0.30, 0.30, 0.10, 0.0]])
    masked = np.array([[False, False, False, False, True, False, True]])
    neg, st = select_negatives(ids, cand_q, cand_pos, np.array([0.8]), masked, Phase(0, 0, 3, 0.2, 0.95),
                               FilterConfig(rel=0.95, dup=0.98))
    # 10, 11: cos_q > 0.95 * 0.8 = 0.76 (rel); 12: near-duplicate of the positive (dup); 14 masked;
    # 15: below the band; -1 padding (mask). Only 13 survives: the sample lacks negatives.
    np.testing.assert_array_equal(neg, [[13, -1, -1]])
    s = st.summary()
    assert st.removed == {"mask": 2, "dup": 1, "rel": 2, "band": 1}
    assert s["pct_short"] == 100.0 and s["pos_mean"] == pytest.approx(0.8) and s["neg_mean"] == pytest.approx(0.6)
    assert s["pct_removed_rel"] == pytest.approx(100 * 2 / 7)
    table = st.table()
    assert "% candidates removed by rel" in table and "% samples lacking negatives" in table
    # filters off: the two top candidates come back
    neg2, _ = select_negatives(ids, cand_q, cand_pos, np.array([0.8]), masked, Phase(0, 0, 3, -1, 1),
                               FilterConfig(rel=0.0, dup=1.0))
    np.testing.assert_array_equal(neg2, [[10, 11, 12]])


def test_keep_back_exempts_the_articles_earlier_chunks_from_rel_only():
    """With keep_back, a candidate flagged as lying before the context in the target's article survives the rel
    filter (a known negative); the dup filter and the band still apply to it, and nothing changes without the flag."""
    ids = np.array([[10, 11, 12, 13]])
    cand_q = np.array([[0.90, 0.85, 0.80, 0.50]])
    cand_pos = np.array([[0.50, 0.99, 0.20, 0.30]])
    back = np.array([[True, True, False, False]])  # 10, 11: earlier chunks of the target's article
    masked = np.zeros((1, 4), bool)
    pos_q, phase = np.array([0.8]), Phase(0, 0, 3, 0.2, 0.95)
    neg, st = select_negatives(ids, cand_q, cand_pos, pos_q, masked, phase, FilterConfig(0.95, 0.98, True), back)
    np.testing.assert_array_equal(neg, [[10, 13, -1]])  # 11 is a near-duplicate of the positive; 12 fails rel
    assert st.removed == {"mask": 0, "dup": 1, "rel": 1, "band": 0}
    neg, _ = select_negatives(ids, cand_q, cand_pos, pos_q, masked, phase, FilterConfig(0.95, 0.98), back)
    np.testing.assert_array_equal(neg, [[13, -1, -1]])


def test_mining_core_flags_the_chunks_before_the_context_as_back(tmp_path):
    """MiningCore passes keep_back's mask: same article, before the target, not masked (the context is)."""
    from tests.conftest import make_synthetic_bank
    from vecrag.bank.sequences import make_samples
    from vecrag.index.search import ExactTorchIndex
    from vecrag.models.towers import QueryTower, TowerConfig
    from vecrag.train.losses import ChunkMeta, NegativeMasker
    from vecrag.train.mining import miners

    bank = make_synthetic_bank(tmp_path / "b", n_articles=6, per_article=12, dim=16)
    samples = make_samples(bank, "train", min_context=1)
    seen = {}
    real = miners.pack_selection

    def spy(cand, cq, cp, pq, masked, phase, filt, back=None):
        seen.update(cand=cand.numpy(), masked=masked.numpy(), back=back.numpy())
        return real(cand, cq, cp, pq, masked, phase, filt, back)

    core = miners.MiningCore(bank.vectors, samples, 3, NegativeMasker(ChunkMeta.from_bank(bank), window=0),
                             FilterConfig(0.95, 0.98, True), 40, ExactTorchIndex(bank.vectors))
    idx = np.arange(len(samples))[samples.target - samples.start >= 6][:4]  # >= 3 chunks before the context
    miners.pack_selection = spy
    try:
        core.mine(QueryTower(16, TowerConfig(hidden=8)), idx, Phase(0, 0, 4, -1.0, 1.0))
    finally:
        miners.pack_selection = real
    cand, back = seen["cand"], seen["back"]
    start, target = samples.start[idx][:, None], samples.target[idx][:, None]
    expect = (cand >= start) & (cand < target - 3) & (cand >= 0)  # before the 3-chunk context
    np.testing.assert_array_equal(back, expect)
    assert back.any()


def test_select_negatives_takes_the_first_kept_candidates_of_each_row():
    """The vectorised selection against a per-row reference, on random rows (some with too few candidates)."""
    rng = np.random.default_rng(3)
    B, K = 64, 40
    cand = rng.integers(0, 10_000, (B, K))
    cand[::7, 30:] = -1  # padding
    cand_q = -np.sort(-rng.uniform(-0.2, 1.0, (B, K)), axis=1).astype(np.float32)
    cand_pos = rng.uniform(-0.2, 1.0, (B, K)).astype(np.float32)
    pos_q = rng.uniform(0.3, 1.0, B).astype(np.float32)
    masked = rng.random((B, K)) < 0.3
    phase = Phase(0, 0, 8, 0.2, 0.9)
    filt = FilterConfig(0.95, 0.98)
    out, st = select_negatives(cand, cand_q, cand_pos, pos_q, masked, phase, filt)
    keep = ~(masked | (cand < 0) | (cand_pos > 0.98) | (cand_q > 0.95 * pos_q[:, None])
             | (cand_q < 0.2) | (cand_q > 0.9))
    short, total, s = 0, 0, 0.0
    for b in range(B):
        sel = np.flatnonzero(keep[b])[:8]
        expect = np.full(8, -1)
        expect[:len(sel)] = cand[b, sel]
        np.testing.assert_array_equal(out[b], expect)
        short += len(sel) < 8
        total += len(sel)
        s += float(cand_q[b, sel].astype(np.float64).sum())
    assert (st.n_short, st.neg_n) == (short, total) and 0 < short < B
    assert st.neg_sum == pytest.approx(s, rel=1e-12)
