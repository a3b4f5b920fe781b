"""vecrag.index.ivf_torch: spherical k-means and list assignment in torch (run here on the CPU), used as the IVF /
IVF-PQ coarse quantizer of a faiss index with preassigned adds."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from tests.conftest import make_synthetic_bank
from vecrag.errors import VecragError
from vecrag.index import build as index_build
from vecrag.index import ivf_torch
from vecrag.index.build import make_empty, resolve_params, training_sample


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _blobs(n: int, dim: int, centers: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = _unit(rng.standard_normal((centers, dim)))
    lab = rng.integers(0, centers, n)
    return _unit(c[lab] + noise * rng.standard_normal((n, dim)).astype(np.float32)), lab


def test_kmeans_recovers_separated_clusters_and_is_seeded() -> None:
    x, lab = _blobs(4000, 32, 8, 0.05, seed=1)
    # k-means (faiss's too) can stop in a local optimum from an unlucky random start; take the first seed
    # whose start has a point in every true cluster, then the iterations must recover all 8 clusters
    seed = next(s for s in range(10_000)
                if len(set(lab[ivf_torch.initial_ids(len(x), 8, np.random.default_rng(s))])) == 8)
    c = ivf_torch.spherical_kmeans(x, 8, seed=seed)
    assert c.shape == (8, 32) and c.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    got = ivf_torch.assign(x, c)
    for t in range(8):  # each true cluster maps to exactly one centroid, and no two share one
        assert len(np.unique(got[lab == t])) == 1
    assert len(np.unique(got)) == 8
    np.testing.assert_array_equal(c, ivf_torch.spherical_kmeans(x, 8, seed=seed))
    assert not np.array_equal(c, ivf_torch.spherical_kmeans(x, 8, seed=seed + 1))


def test_kmeans_objective_close_to_faiss() -> None:
    x, _ = _blobs(6400, 32, 300, 0.4, seed=2)
    ours = ivf_torch.spherical_kmeans(x, 100, seed=0)
    km = faiss.Kmeans(32, 100, niter=10, spherical=True, seed=0)
    km.train(x)
    obj = [float((x @ c.T).max(1).mean()) for c in (ours, km.centroids)]
    assert obj[0] >= obj[1] - 0.01, obj  # mean inner product to the nearest centroid


def test_empty_clusters_are_reseeded(caplog: pytest.LogCaptureFixture) -> None:
    # 3 distinct points repeated: 6 centroids start on (at most 3) distinct points, so ties leave clusters
    # empty in every iteration; each must come back as a unit training point, never zero / NaN
    base = _unit(np.random.default_rng(0).standard_normal((3, 16)))
    x = np.repeat(base, 100, axis=0)
    caplog.set_level(logging.DEBUG, logger="vecrag.index.ivf_torch")
    c = ivf_torch.spherical_kmeans(x, 6, seed=0)
    assert "3 empty clusters re-seeded" in caplog.text
    assert np.isfinite(c).all()
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    assert (np.abs(c @ base.T).max(axis=1) > 0.999).all()  # every centroid sits on one of the points
    with pytest.raises(ValueError):
        ivf_torch.spherical_kmeans(x[:5], 6)


def test_assign_matches_faiss_quantizer() -> None:
    x, _ = _blobs(3000, 64, 40, 0.3, seed=5)
    c = ivf_torch.spherical_kmeans(x, 50, seed=0, niter=3)
    q = faiss.IndexFlatIP(64)
    q.add(c)
    ref_s, ref_i = q.search(x, 1)
    got = ivf_torch.assign(x, c, rows=700)  # several chunks, last one partial
    np.testing.assert_array_less(np.abs((x * c[got]).sum(1) - ref_s[:, 0]), 1e-5)  # ties: equal best score
    assert (got == ref_i[:, 0]).mean() > 0.99


def _build_torch(x: np.ndarray, kind: str, params: dict) -> faiss.Index:
    idx = make_empty(kind, x.shape[1], params)
    sample = training_sample(x, kind, params, seed=0)
    cents = ivf_torch.spherical_kmeans(sample, params["nlist"], seed=0)
    ivf_torch.set_quantizer(idx, cents, sample)
    ivf = faiss.extract_index_ivf(idx)
    assert ivf.quantizer.ntotal == params["nlist"]  # faiss's train kept our centroids
    np.testing.assert_array_equal(ivf.quantizer.reconstruct_n(0, params["nlist"]), cents)
    for s in range(0, len(x), 5000):
        ivf_torch.add_assigned(idx, x[s:s + 5000], cents)
    ivf.nprobe = params["nlist"]
    return idx


def _recall(ids: np.ndarray, gt: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / gt.shape[1] for a, b in zip(ids, gt, strict=True)]))


@pytest.fixture(scope="module")
def data20k() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, _ = _blobs(20000, 64, 200, 0.5, seed=7)
    q = _unit(x[np.random.default_rng(8).integers(0, len(x), 200)]
              + 0.2 * np.random.default_rng(9).standard_normal((200, 64)).astype(np.float32))
    flat = faiss.IndexFlatIP(64)
    flat.add(x)
    return x, q, flat.search(q, 10)[1]


def test_ivf_flat_with_torch_quantizer_is_exact_at_full_nprobe(data20k) -> None:
    x, q, gt = data20k
    _, params = resolve_params(len(x), 64, "ivf", nlist=64)
    idx = _build_torch(x, "ivf", params)
    assert idx.ntotal == len(x)
    ivf = faiss.extract_index_ivf(idx)
    ids = np.concatenate([faiss.rev_swig_ptr(ivf.invlists.get_ids(i), ivf.invlists.list_size(i)).copy()
                          for i in range(ivf.nlist)])
    np.testing.assert_array_equal(np.sort(ids), np.arange(len(x)))
    assert _recall(idx.search(q, 10)[1], gt) == 1.0


def test_ivfpq_with_torch_quantizer_matches_faiss_training(data20k) -> None:
    x, q, gt = data20k
    _, params = resolve_params(len(x), 64, "ivfpq", nlist=64, m=32, nbits=5)
    ours = _build_torch(x, "ivfpq", params)
    ref = make_empty("ivfpq", 64, params)
    ref.train(training_sample(x, "ivfpq", params, seed=0))
    ref.add(x)
    faiss.extract_index_ivf(ref).nprobe = params["nlist"]
    assert ours.ntotal == ref.ntotal == len(x)
    r_ours, r_ref = _recall(ours.search(q, 10)[1], gt), _recall(ref.search(q, 10)[1], gt)
    # measured 0.586 vs 0.5895 (at 32x8: 0.814 vs 0.8135, 20x slower to train): the PQ training is faiss's
    # in both; only the coarse k-means (and its random start) differs
    assert r_ref > 0.5 and r_ours >= r_ref - 0.03, (r_ours, r_ref)


def test_cuda_without_faiss_gpu_resolves_to_the_torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from vecrag.index import gpu as index_gpu

    monkeypatch.setattr(index_gpu, "faiss_gpu_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert index_build.resolve_build_device("cuda", "ivfpq") == ("cpu", "cuda")
    assert index_build.resolve_build_device("cpu", "ivf") == ("cpu", None)
    with pytest.raises(VecragError):  # flat / HNSW: no torch path; still needs faiss-gpu as before
        index_build.resolve_build_device("cuda", "flat")


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_build_index_wiring_through_the_torch_path(kind: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the path build_from_vectors takes on cuda, pointed at the CPU so that it runs here
    monkeypatch.setattr(index_build, "resolve_build_device", lambda device, kind: ("cpu", "cpu"))
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=100, per_article=12, dim=16)
    kw = {"nlist": 16, "nprobe": 16} if kind == "ivf" else {"nlist": 16, "nprobe": 16, "m": 8, "nbits": 6}
    idx = index_build.build_index(bank, kind, device="cuda", progress=False, **kw)
    rec = bank.manifest["index"]
    assert idx.trained_with == rec["trained_with"] == "torch-cpu" and rec["ntotal"] == bank.n == idx.ntotal
    q = bank.vectors_f32(np.arange(0, bank.n, 7))
    exact = faiss.IndexFlatIP(bank.dim)
    exact.add(bank.vectors_f32(np.arange(bank.n)))
    r = _recall(idx.search(q, 10)[1], exact.search(q, 10)[1])
    assert r == 1.0 if kind == "ivf" else r > 0.8  # ivfpq: exact re-ranking of refine*k (default 4) candidates
