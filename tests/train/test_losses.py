"""InfoNCE value against a hand computation; every mask (self, text, window, identical vector, padding)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vecrag.train.losses import ChunkMeta, InfoNCELoss, MemoryBankQueue, NegativeMasker


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_infonce_matches_hand_computation_with_cosine_margin():
    q = t([[1, 0, 0], [0, 1, 0]])
    pos = t([[0.8, 0.6, 0], [0, 0.6, 0.8]])
    self_mask = torch.eye(2, dtype=torch.bool)
    loss, stats = InfoNCELoss(tau=0.5, margin=0.1)(q, pos, [(pos, self_mask)])
    # row 0: positive (0.8 - 0.1) / 0.5 = 1.4, negative p1: 0 / 0.5 = 0
    # row 1: positive (0.6 - 0.1) / 0.5 = 1.0, negative p0: 0.6 / 0.5 = 1.2
    l0 = -1.4 + math.log(math.exp(1.4) + math.exp(0.0))
    l1 = -1.0 + math.log(math.exp(1.0) + math.exp(1.2))
    assert loss.item() == pytest.approx((l0 + l1) / 2, abs=1e-6)
    assert stats["pos_cos"] == pytest.approx(0.7) and stats["n_neg"] == 1.0 and stats["acc"] == 0.5
    # the margin is in cosine units: margin m == lowering the positive's cosine by m
    loss0, _ = InfoNCELoss(tau=0.5, margin=0.0)(q, pos, [(pos, self_mask)])
    assert loss.item() > loss0.item()


def test_mined_per_sample_negatives_and_masked_entries_do_not_count():
    q = t([[1, 0, 0]])
    pos = t([[0.6, 0.8, 0]])
    mined = t([[[0.9, 0.0, 0.43589], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]])  # second one = the positive's twin
    mask = torch.tensor([[False, True, False]])
    loss, stats = InfoNCELoss(tau=0.1)(q, pos, [(mined, mask)])
    expect = -6.0 + math.log(math.exp(6.0) + math.exp(9.0) + math.exp(0.0))
    assert loss.item() == pytest.approx(expect, rel=1e-5)
    assert stats["n_neg"] == 2.0 and stats["acc"] == 0.0


@pytest.fixture
def masker_setup():
    # chunks 0-3: article 0 (positions 0-3); 4-5: article 1; 6: article 2 with the SAME TEXT as chunk 1;
    # 7: article 3 whose vector is identical to chunk 1's
    meta = ChunkMeta(article=np.array([0, 0, 0, 0, 1, 1, 2, 3]), position=np.array([0, 1, 2, 3, 0, 1, 0, 0]),
                     text_group=np.array([0, 1, 2, 3, 4, 5, 1, 7]))
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((8, 4)).astype(np.float32)
    vecs[7] = vecs[1]
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return meta, torch.from_numpy(vecs)


def test_every_mask(masker_setup):
    meta, vecs = masker_setup
    masker = NegativeMasker(meta, window=1)
    cand = np.array([[-1, 1, 0, 2, 3, 6, 7, 4]])
    parts = masker.id_mask(np.array([1]), cand)
    np.testing.assert_array_equal(parts["pad"][0], [1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(parts["self"][0], [0, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(parts["window"][0], [0, 1, 1, 1, 0, 0, 0, 0])  # |pos - 1| <= 1, article 0
    np.testing.assert_array_equal(parts["text"][0], [0, 1, 0, 0, 0, 1, 0, 0])
    cv = vecs[np.where(cand >= 0, cand, 0)]
    m, counts = masker.mask(np.array([1]), cand, vecs[[1]], cv)
    np.testing.assert_array_equal(m.numpy()[0], [1, 1, 1, 1, 0, 1, 1, 0])  # 7 = identical vector
    assert counts["dupvec"] == 1
    # tensor ids (the GPU miner's path): the same masks, as tensors, and the same counts
    parts_t = masker.id_mask(torch.tensor([1]), torch.from_numpy(cand))
    for k, v in parts.items():
        np.testing.assert_array_equal(parts_t[k].numpy(), v)
    m_t, counts_t = masker.mask(torch.tensor([1]), torch.from_numpy(cand), vecs[[1]], cv)
    assert torch.equal(m_t, m) and {k: int(v) for k, v in counts_t.items()} == {k: int(v) for k, v in counts.items()}
    # window off: same-article neighbours become valid negatives again
    m2, _ = NegativeMasker(meta, window=-1).mask(np.array([1]), cand, vecs[[1]], cv)
    np.testing.assert_array_equal(m2.numpy()[0], [1, 1, 0, 0, 0, 1, 1, 0])
    # window 2 reaches chunk 3
    m3, _ = NegativeMasker(meta, window=2).mask(np.array([1]), cand, vecs[[1]], cv)
    assert bool(m3[0, 4])


def test_inbatch_mask_covers_duplicate_positives(masker_setup):
    meta, vecs = masker_setup
    pos_ids = np.array([1, 6, 4])  # 1 and 6 share a text: neither may be the other's negative
    m, _ = NegativeMasker(meta, window=0).mask(pos_ids, pos_ids, vecs[pos_ids], vecs[pos_ids])
    np.testing.assert_array_equal(m.numpy(), [[1, 1, 0], [1, 1, 0], [0, 0, 1]])


def test_memory_bank_queue_ring_and_state():
    qb = MemoryBankQueue(4)
    assert len(qb) == 0
    qb.push(np.array([1, 2, 3]))
    qb.push(np.array([4, 5]))
    assert sorted(qb.current().tolist()) == [2, 3, 4, 5]
    other = MemoryBankQueue(4)
    other.load_state_dict(qb.state_dict())
    other.push(np.array([9]))
    qb.push(np.array([9]))
    np.testing.assert_array_equal(other.ids, qb.ids)
    with pytest.raises(ValueError):
        MemoryBankQueue(8).load_state_dict(qb.state_dict())
    MemoryBankQueue(0).push(np.array([1]))  # size 0 = off, never grows


def test_the_lvm_contrastive_term_is_the_one_infonce():
    """The LVM's in-batch term is info_nce with the other targets as negatives and the positive's exact
    duplicates excluded: it equals a hand-built cross entropy with those columns masked."""
    from vecrag.train.lvm_task import LVMLossConfig, lvm_loss

    g = torch.Generator().manual_seed(0)
    pred = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    tgt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    groups = torch.tensor([0, 1, 2, 1, 3, 4])  # targets 1 and 3 are byte-identical duplicates
    cfg = LVMLossConfig(w_cos=0.0, w_mse=0.0, w_nce=1.0, tau=0.1)
    loss, st = lvm_loss(pred, tgt, cfg, groups)
    logits = pred @ tgt.T / 0.1
    dup = (groups[:, None] == groups[None, :]) & ~torch.eye(6, dtype=torch.bool)
    ref = torch.nn.functional.cross_entropy(logits.masked_fill(dup, float("-inf")), torch.arange(6))
    assert float(loss) == pytest.approx(float(ref), abs=1e-6) and float(st["loss_nce"]) == pytest.approx(float(ref))
    plain, _ = lvm_loss(pred, tgt, cfg)  # without groups the duplicate is an ordinary negative: a higher loss
    assert float(plain) > float(loss)
