"""Bank format, article-level split, sample generation and hit rules (no encoder needed)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import make_synthetic_bank
from vecrag.bank.sequences import context_window, gather_context, make_samples
from vecrag.bank.store import Bank, EncoderInfo, split_of, write_bank
from vecrag.errors import VecragError
from vecrag.scoring.metrics import first_hit_rank, recall_table, wilson


def test_bank_roundtrip_and_verify(tmp_path):
    bank = make_synthetic_bank(tmp_path / "b", n_articles=10, per_article=[3, 5, 1, 7, 2, 4, 4, 6, 8, 2])
    assert bank.n == 42 and bank.dim == 32
    bank.verify()
    again = Bank.open(tmp_path / "b", verify=True)
    np.testing.assert_array_equal(again.article_start[:8], [0, 0, 0, 3, 3, 3, 3, 3])
    assert again.texts[3] == "article 1 chunk 0"
    assert sum(again.info()["split"]["articles"].values()) == 10


def test_split_is_deterministic_and_stable():
    ids = np.arange(10000)
    a = split_of(ids, 0, (0.9, 0.05, 0.05))
    b = split_of(ids[::-1], 0, (0.9, 0.05, 0.05))[::-1]
    assert (a == b).all()  # an article's split depends only on its id and the seed
    frac = {s: float(np.mean(a == s)) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.9) < 0.02 and abs(frac["test"] - 0.05) < 0.01
    assert (split_of(ids, 1, (0.9, 0.05, 0.05)) != a).any()
    with pytest.raises(VecragError):
        split_of(ids, 0, (0.9, 0.2, 0.05))


def test_samples_never_cross_articles_or_splits(tmp_path):
    counts = [int(x) for x in np.random.default_rng(1).integers(1, 15, 200)]
    bank = make_synthetic_bank(tmp_path / "b", n_articles=200, per_article=counts)
    split_of_article = dict(zip(bank.articles.column("article_id").to_pylist(),
                                bank.articles.column("split").to_pylist(), strict=True))
    seen = {}
    for split in ("train", "val", "test"):
        s = make_samples(bank, split, min_context=1)
        assert len(s) > 0
        ctx = s.context_ids(5)
        for t, row in zip(s.target, ctx, strict=True):
            art = bank.article_of[t]
            assert split_of_article[int(art)] == split
            real = row[row >= 0]
            assert (bank.article_of[real] == art).all()           # never across an article boundary
            assert list(real) == list(range(t - len(real), t))     # the previous chunks, in order
            assert row[-1] == t - 1
        seen[split] = set(bank.article_of[s.target].tolist())
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"])
    assert not (seen["val"] & seen["test"])
    # every position with >= 1 earlier chunk in a train article is a sample
    n_train = sum(c - 1 for c, sp in zip(counts, split_of_article.values(), strict=True) if sp == "train" and c > 1)
    assert len(make_samples(bank, "train")) == n_train


def test_context_window_is_the_same_on_numpy_and_torch():
    """The graphed training step builds context ids with torch from the same function the samples use."""
    import torch

    target, start = np.array([5, 3, 9, 0]), np.array([2, 3, 0, 0])
    want = np.array([[-1, 2, 3, 4], [-1, -1, -1, -1], [5, 6, 7, 8], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(context_window(target, start, 4), want)
    got = context_window(torch.from_numpy(target), torch.from_numpy(start), 4)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), want)


def test_gather_context_masks_padding(tmp_path):
    bank = make_synthetic_bank(tmp_path / "b", n_articles=20, per_article=4)
    s = make_samples(bank, "train")
    ids = s.context_ids(6)
    ctx, mask = gather_context(bank.vectors, ids)
    assert ctx.shape == (len(s), 6, 32)
    assert (mask == (ids >= 0)).all()
    assert np.allclose(ctx[~mask], 0)
    np.testing.assert_allclose(ctx[:, -1], bank.vectors_f32(ids[:, -1]), atol=1e-6)


def test_bad_vectors_rejected(tmp_path):
    v = np.ones((3, 4), np.float32) / 2
    v[1, 0] = np.nan
    with pytest.raises(VecragError, match="NaN"):
        write_bank(tmp_path / "b", v, article_ids=np.zeros(3, np.int64), positions=np.arange(3), texts=["a"] * 3,
                   titles={0: "t"}, encoder=EncoderInfo("x", 4))
    with pytest.raises(VecragError, match="dimension 4, expected 8"):
        write_bank(tmp_path / "b", np.ones((3, 4), np.float32) / 2, article_ids=np.zeros(3, np.int64),
                   positions=np.arange(3), texts=["a"] * 3, titles={0: "t"}, encoder=EncoderInfo("x", 8))
    assert not (tmp_path / "b" / "manifest.json").exists()
    with pytest.raises(VecragError, match="no such bank"):
        Bank.open(tmp_path / "b")
    (tmp_path / "b").mkdir()
    with pytest.raises(VecragError, match="no manifest"):
        Bank.open(tmp_path / "b")


def test_hit_rules():
    ids = np.array([[5, 7, 9, 2], [1, 3, 4, 6], [8, 8, 8, 8]])
    target = np.array([9, 6, 0])
    ctx = np.array([[7, -1], [3, 4], [-1, -1]])
    # row 0: 7 is context -> dropped, 9 lands at rank 1; row 1: 3, 4 dropped, 6 at rank 1
    np.testing.assert_array_equal(first_hit_rank(ids, target, ctx_ids=ctx), [1, 1, -1])
    np.testing.assert_array_equal(first_hit_rank(ids, target), [2, 3, -1])
    group = np.arange(10)
    group[8] = group[0]  # chunk 8 has the same text as chunk 0
    np.testing.assert_array_equal(first_hit_rank(ids, target, ctx_ids=ctx, text_group=group), [1, 1, 0])
    t = recall_table(np.array([0, 1, -1, 4]), ks=(1, 5))
    assert t["R@1"] == 0.25 and t["R@5"] == 0.75 and t["n_queries"] == 4
    assert abs(t["MRR@10"] - (1 + 0.5 + 0.2) / 4) < 1e-12
    lo, hi = wilson(0.5, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60


def test_duplicate_openmp_runtimes_are_reported(monkeypatch, caplog):
    import logging

    from vecrag import runtime

    libs = ["/x/libgomp.so.1", "/y/libgomp-e985bcbb.so.1.0.0"]
    monkeypatch.setattr(runtime, "openmp_runtimes", lambda: libs)
    for policy, level in (("PASSIVE", logging.INFO), ("ACTIVE", logging.WARNING)):
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vecrag.runtime"):
            assert runtime.report_openmp() == libs
        recs = [r for r in caplog.records if "2 OpenMP runtimes" in r.getMessage()]
        assert len(recs) == 1 and recs[0].levelno == level
