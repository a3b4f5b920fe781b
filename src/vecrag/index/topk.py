"""Exact row-wise top-k over many columns by group maxima: one cheap pass instead of a radix select over all.

``torch.topk(s, k)`` over rows of ~1M scores is a radix select with several passes over the whole row; on the
H200 it was 58 % of the async miner's GPU time (7.3 ms for 1,024 queries x 1M, docs/benchmarks.md).
:func:`block_topk` instead splits the columns into groups of ``width`` and

1. takes the maximum of every group (one read of the scores),
2. keeps the ``k`` groups with the largest maxima (a top-k over N / width values),
3. gathers those groups' ``k x width`` scores and takes the top-k among them.

It is exact for any split into groups: let v be the k-th largest score of a row. Every column scoring >= v lies
in a group whose maximum is >= v, and at most k groups have a maximum >= v (each holds a distinct one of the k
columns >= v), so they are all among the k groups kept in step 2. The values returned equal ``torch.topk``'s;
among tied scores the ids may be a different (equally correct) choice: ``torch.topk`` documents no order for
ties either. The last ``N mod width`` columns, which fill no group, are always kept as candidates.

Groups are either ``width`` consecutive columns, or (``strided``) the columns ``g, g + N/width, g + 2 N/width,
...``, whose maxima reduce over a non-inner dimension. On the H200 the strided form is the fast one (the
reduction over a short inner dimension is not vectorised well): 1,024 x 1M fp16 scores, k 138, width 32:
7.21 -> 1.51 ms (4.8x); 4,096 x 400k, k 1000, width 16: 11.6 -> 4.2 ms (2.8x). On this 2-core CPU the gains
are small and depend on k (0.7x-4.5x), so :func:`fast_topk` uses it on CUDA only (``benchmarks/topk_bench.py``).
"""

from __future__ import annotations

import torch


def block_topk(s: torch.Tensor, k: int, width: int = 32,
               strided: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, column ids) of the ``k`` largest scores of each row of the 2-D ``s``, sorted descending, as
    ``torch.topk(s, k, dim=1)``. Falls back to ``torch.topk`` where groups cannot win (fewer than 4 k groups)."""
    if s.dim() != 2:
        raise ValueError(f"block_topk needs a 2-D score matrix, got shape {tuple(s.shape)}")
    rows, n = s.shape
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must be between 0 and the {n} columns")
    nb = n // width
    if width < 2 or nb < 4 * k or k == 0:  # the candidates (k x width) would not be much fewer than a row
        return torch.topk(s, k, dim=1)
    main = nb * width
    if strided:
        maxima = s[:, :main].reshape(rows, width, nb).amax(dim=1)
    else:
        maxima = s[:, :main].reshape(rows, nb, width).amax(dim=2)
    groups = torch.topk(maxima, k, dim=1, sorted=False).indices  # [rows, k]
    offs = torch.arange(width, device=s.device)
    cols = groups[:, :, None] + offs * nb if strided else groups[:, :, None] * width + offs
    cols = cols.reshape(rows, k * width)
    if main < n:  # the tail that fills no group: always a candidate
        cols = torch.cat([cols, torch.arange(main, n, device=s.device).expand(rows, n - main)], dim=1)
    vals, j = torch.topk(torch.gather(s, 1, cols), k, dim=1)
    return vals, torch.gather(cols, 1, j)


def fast_topk(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(s, k, dim=1)`` by the fastest exact route measured for ``s``'s device: strided groups of
    ``4096 / k`` columns (16 to 128) on CUDA, plain ``torch.topk`` elsewhere."""
    if s.device.type != "cuda":
        return torch.topk(s, k, dim=1)
    return block_topk(s, k, width=max(16, min(128, 4096 // max(k, 1))), strided=True)
