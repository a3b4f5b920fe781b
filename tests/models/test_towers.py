"""Query towers start exactly at their anchor heuristic; doc towers start as the identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import make_synthetic_bank
from vecrag.bank.sequences import gather_context, make_samples
from vecrag.errors import VecragError
from vecrag.index.search import ExactTorchIndex
from vecrag.models.towers import QUERY_TOWERS, DocTower, QueryTower, RetrieverModel, TowerConfig
from vecrag.scoring.heuristics import heuristic_query
from vecrag.scoring.ranks import retrieve_ranks


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return make_synthetic_bank(tmp_path_factory.mktemp("towers") / "bank", n_articles=40, per_article=10)


@pytest.mark.parametrize("kind", QUERY_TOWERS)
@pytest.mark.parametrize("anchor,alpha", [("last", 0.5), ("ewma", 0.5)])
def test_step0_tower_reproduces_anchor_recall_exactly(bank, kind, anchor, alpha):
    L = 6
    samples = make_samples(bank, "train")
    torch.manual_seed(0)
    tower = QueryTower(bank.dim, TowerConfig(kind=kind, anchor=anchor, alpha=alpha, hidden=16, heads=2)).eval()
    ctx, mask = gather_context(bank.vectors, samples.context_ids(L))
    with torch.no_grad():
        q = tower(torch.from_numpy(ctx), torch.from_numpy(mask)).numpy()
        assert torch.count_nonzero(tower.residual(torch.from_numpy(ctx), torch.from_numpy(mask))) == 0
    base = heuristic_query(ctx, mask, anchor, alpha)
    np.testing.assert_allclose(q, base, atol=1e-6)
    index = ExactTorchIndex(bank.vectors)
    r_tower = retrieve_ranks(index, q, samples, L, 50, bank=bank)
    r_base = retrieve_ranks(index, base, samples, L, 50, bank=bank)
    np.testing.assert_array_equal(r_tower, r_base)  # the same recall, query by query
    assert (r_base >= 0).mean() > 0.5  # the check is not vacuous


def test_residual_moves_after_one_step_and_padding_is_safe():
    torch.manual_seed(0)
    tower = QueryTower(8, TowerConfig(kind="transformer", hidden=16, heads=2, layers=2))
    ctx = torch.randn(3, 5, 8)
    mask = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    ctx = ctx * mask[..., None]
    opt = torch.optim.SGD(tower.parameters(), lr=0.1)
    target = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    (-(tower(ctx, mask) * target).sum()).backward()
    opt.step()
    out = tower(ctx, mask)
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(tower.residual(ctx, mask)) > 0
    np.testing.assert_allclose(out.norm(dim=-1).detach().numpy(), 1.0, atol=1e-5)


def test_doc_tower_mlp_starts_as_identity_and_reencodes_bank(bank):
    doc = DocTower(bank.dim, "mlp", hidden=16)
    v = torch.from_numpy(bank.vectors_f32(np.arange(10)))
    torch.testing.assert_close(doc(v), v, atol=1e-6, rtol=0)
    enc = doc.encode_bank(bank.vectors, chunk=64)
    assert enc.shape == (bank.n, bank.dim)
    torch.testing.assert_close(enc, torch.from_numpy(np.array(bank.vectors_f32())), atol=1e-6, rtol=0)
    assert DocTower(bank.dim).is_identity and not doc.is_identity
    m = RetrieverModel(bank.dim, TowerConfig(doc="mlp", doc_hidden=8))
    assert any(n.startswith("doc.") for n, _ in m.named_parameters())


@pytest.mark.parametrize("bad", [{"kind": "cnn"}, {"anchor": "median"}, {"alpha": 0.0}, {"doc": "bert"},
                                 {"kind": "transformer", "hidden": 10, "heads": 4}])
def test_bad_tower_config(bad):
    with pytest.raises(VecragError):
        TowerConfig(**bad).validate()


def test_transformer_context_longer_than_its_positions_names_the_keys():
    tower = QueryTower(8, TowerConfig(kind="transformer", hidden=8, heads=2, max_len=4))
    with pytest.raises(VecragError, match="model.max_len or lower train.context"):
        tower(torch.zeros(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
