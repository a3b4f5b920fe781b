"""IVF coarse quantizer training and list assignment in torch, for GPUs that faiss-cpu cannot use.

Why: a GPU machine may have PyTorch with CUDA but only faiss-cpu (faiss-gpu has no pip wheels), where IVF
k-means (e.g. 12,649 lists on 810k points) and assigning 10M vectors to their lists take many minutes on the
CPU cores. Both are dense inner-product matmuls + argmax, which a GPU does in seconds. The centroids go into the faiss
index's quantizer, so faiss's own ``index.train`` skips coarse training (``Level1Quantizer::train_q1``: "IVF
quantizer does not need training" when ``quantizer.ntotal == nlist``) and only trains IVF-PQ's codebooks;
the vectors are then added with ``faiss.contrib.ivf_tools.add_preassigned`` (ids 0..N-1 in order).

The k-means mirrors faiss's for an inner-product IVF (``cp.spherical``, ``niter = 10``): initial centroids
are distinct random training points, each iteration assigns by maximum inner product, takes cluster means
and renormalises them to unit length. faiss splits a large cluster when one goes empty; here the empty
cluster restarts at a random training point (which lies in a cluster with probability proportional to that
cluster's size, the same choice of where to split). Randomness comes from numpy's seeded generator on the
host, so a seed gives the same centroids on every run (and the same starts on every device). Cluster sums
use ``index_add_`` on the CPU and ``index_put_(accumulate=True)`` on CUDA, the two deterministic
scatter-adds (PyTorch's determinism notes). Points are processed ``rows`` at a time so memory stays at
``rows x k`` scores, never ``N x k``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

SCORE_ELEMS = 1 << 28  # scores held at once per chunk (1 GiB in fp32)
MAX_ROWS = 1 << 16


def chunk_rows(k: int) -> int:
    """Rows per matmul chunk: at most 2^16, and at most ``SCORE_ELEMS / k`` so a chunk's scores stay bounded."""
    return int(max(256, min(MAX_ROWS, SCORE_ELEMS // max(k, 1))))


def _assign_t(x: torch.Tensor, c: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax list, max score) of each row of ``x`` (on ``c``'s device) against centroids ``c``."""
    labels = torch.empty(len(x), dtype=torch.int64, device=c.device)
    best = torch.empty(len(x), dtype=torch.float32, device=c.device)
    for s in range(0, len(x), rows):
        xc = x[s:s + rows].to(c.device, c.dtype)
        sc, lab = (xc @ c.T).max(dim=1)
        labels[s:s + len(xc)], best[s:s + len(xc)] = lab, sc.float()
    return labels, best


def initial_ids(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """The k distinct training points the centroids start from (faiss: a random permutation's first k)."""
    return rng.choice(n, size=k, replace=False)


def spherical_kmeans(x: np.ndarray, k: int, *, niter: int = 10, seed: int = 0, device: str = "cpu",
                     rows: int | None = None) -> np.ndarray:
    """k unit-norm centroids (float32, k x D) of the unit rows ``x`` by inner-product k-means on ``device``."""
    n, d = x.shape
    if n < k:
        raise ValueError(f"k-means needs at least k={k} training points, got {n}")
    rows = rows or chunk_rows(k)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)
    c = torch.nn.functional.normalize(xt[torch.from_numpy(initial_ids(n, k, rng)).to(dev)], dim=1)
    for it in range(niter):
        labels, best = _assign_t(xt, c, rows)
        sums = torch.zeros((k, d), dtype=torch.float32, device=dev)
        if dev.type == "cuda":
            sums.index_put_((labels,), xt, accumulate=True)  # sort-based on CUDA: deterministic
        else:
            sums.index_add_(0, labels, xt)
        counts = torch.bincount(labels, minlength=k)
        empty = torch.nonzero(counts == 0).flatten().cpu().numpy()
        if len(empty):  # faiss splits big clusters; a random point lands in one with p ~ its size
            sums[torch.from_numpy(empty).to(dev)] = xt[torch.from_numpy(
                rng.choice(n, size=len(empty), replace=False)).to(dev)]
        c = torch.nn.functional.normalize(sums, dim=1)
        log.debug("k-means iter %d: objective %.4f, %d empty clusters re-seeded", it, float(best.mean()), len(empty))
    return c.cpu().numpy().astype(np.float32, copy=False)


def centroids_on(centroids: np.ndarray, device: str) -> torch.Tensor:
    """The centroids as a float32 tensor on ``device`` (upload once, reuse for every batch of adds)."""
    return torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(device)


def assign(x: np.ndarray, centroids: np.ndarray | torch.Tensor, *, device: str = "cpu",
           rows: int | None = None) -> np.ndarray:
    """Index (int64) of each row's maximum-inner-product centroid, computed on ``device`` in chunks."""
    c = centroids if isinstance(centroids, torch.Tensor) else centroids_on(centroids, device)
    xa = np.ascontiguousarray(x, dtype=np.float32)
    xt = torch.from_numpy(xa if xa.flags.writeable else xa.copy())  # a read-only memmap view: torch warns
    return _assign_t(xt, c, rows or chunk_rows(len(c)))[0].cpu().numpy()


def set_quantizer(index: Any, centroids: np.ndarray, train_x: np.ndarray) -> None:
    """Put ``centroids`` into the IVF index's quantizer and let faiss train the rest on ``train_x``.

    With ``quantizer.ntotal == nlist`` faiss's ``train`` keeps these centroids and only trains what comes
    after them (IVF-PQ: the PQ codebooks on residuals; IVF-Flat: nothing)."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    if ivf.quantizer.ntotal:
        raise ValueError("the IVF quantizer already holds centroids")
    if centroids.shape != (ivf.nlist, ivf.d):
        raise ValueError(f"expected {ivf.nlist} x {ivf.d} centroids, got {centroids.shape}")
    ivf.quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    index.train(np.ascontiguousarray(train_x, dtype=np.float32))


def add_assigned(index: Any, x: np.ndarray, centroids: np.ndarray | torch.Tensor, *, device: str = "cpu") -> None:
    """Add the rows ``x`` (ids continue from ``ntotal``, as ``index.add``) with lists chosen on ``device``."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    x = np.ascontiguousarray(x, dtype=np.float32)
    add_preassigned(faiss.extract_index_ivf(index), x, assign(x, centroids, device=device))
