"""InfoNCE over in-batch positives, a memory-bank queue and mined hard negatives, with masks.

For query ``q_i`` (unit), positive ``p_i`` (unit) and candidate negatives ``n_ij`` (unit)::

    s_pos = (cos(q_i, p_i) - margin) / tau          # margin in COSINE units, subtracted before / tau
    s_ij  = cos(q_i, n_ij) / tau                      # masked candidates get -inf
    loss  = mean_i [ -s_pos + logsumexp(s_pos, s_i1, s_i2, ...) ]

A margin of 0.03 therefore asks the positive to beat every negative by 0.03 in cosine (a 0.03 applied
to logits at tau = 0.05 would be 0.0015 in cosine: it would do nothing; docs/design.md).

Negative sets: the other samples' positives in the batch (in-batch), the ``MemoryBankQueue`` of recent
positives (chunk ids; their vectors are re-gathered and passed through the doc tower at use time) and the
per-sample mined ids. From EVERY set the following are masked (``NegativeMasker``): the positive's own chunk
id, chunks with the same text group as the positive (byte-identical text), candidates whose vector is
identical to the positive's (cosine >= 1 - ``dup_eps``), and, when ``window >= 0``, chunks of the same
article within +-``window`` positions of the positive. Padding ids (-1) are masked too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from vecrag.runtime import to_device


@dataclass
class ChunkMeta:
    """Per-chunk metadata the masks need (int64 arrays of length N)."""

    article: np.ndarray
    position: np.ndarray
    text_group: np.ndarray | None = None

    @classmethod
    def from_bank(cls, bank) -> ChunkMeta:
        return cls(np.asarray(bank.article_of, np.int64), np.asarray(bank.position_of, np.int64),
                   np.asarray(bank.text_group, np.int64))


class NegativeMasker:
    """Boolean masks (True = not a valid negative) for candidate ids against each sample's positive."""

    def __init__(self, meta: ChunkMeta, *, window: int = 0, dup_eps: float = 1e-6):
        self.meta = meta
        self._on: dict[str, tuple] = {}  # device -> the meta arrays there
        self.window = int(window)
        self.dup_eps = float(dup_eps)

    def _meta(self, like):
        """(article, position, text group) as numpy arrays, or as tensors on ``like``'s device (cached)."""
        m = self.meta
        if not isinstance(like, torch.Tensor):
            return m.article, m.position, m.text_group
        key = str(like.device)
        if key not in self._on:
            self._on[key] = tuple(None if a is None else torch.from_numpy(np.array(a, np.int64)).to(like.device)
                                  for a in (m.article, m.position, m.text_group))
        return self._on[key]

    def id_mask(self, pos_ids, cand_ids) -> dict:
        """Masks from ids alone: ``pad``, ``self``, ``text``, ``window`` (each [B, K], disjoint not required).
        numpy in, numpy out; torch tensors in, tensors out on their device (the GPU miner). ``cand_ids`` [K] (one
        list for every sample: in-batch, queue) has its metadata read once and broadcast, not B times: for a
        4,096-id queue and 256 samples that was 10 ms a step on the host."""
        if isinstance(cand_ids, torch.Tensor):
            pos = torch.as_tensor(pos_ids, dtype=torch.int64, device=cand_ids.device)[:, None]
            cand = cand_ids.long() if cand_ids.dim() == 2 else cand_ids.long()[None, :]
        else:
            pos = np.asarray(pos_ids, np.int64)[:, None]
            cand = np.asarray(cand_ids, np.int64)
            cand = cand if cand.ndim == 2 else cand[None, :]
        article, position, tg = self._meta(cand)
        pad = cand < 0  # [B or 1, K]
        c = cand * ~pad  # padding reads row 0, masked below
        self_ = (cand == pos) & ~pad  # [B, K] from here on
        none = self_ & False  # all False, [B, K], numpy or torch alike
        out = {"pad": pad | none, "self": self_}
        out["text"] = (tg[c] == tg[pos]) & ~pad if tg is not None else none
        if self.window >= 0:
            out["window"] = (article[c] == article[pos]) & (abs(position[c] - position[pos]) <= self.window) & ~pad
        else:
            out["window"] = none
        return out

    def vector_mask(self, pos_vecs: torch.Tensor, cand_vecs: torch.Tensor) -> torch.Tensor:
        """[B, K] True where a candidate's vector is identical to the positive's (cos >= 1 - dup_eps)."""
        if cand_vecs.dim() == 2:
            cos = pos_vecs @ cand_vecs.T
        else:
            cos = torch.einsum("bd,bkd->bk", pos_vecs, cand_vecs)
        return cos >= 1.0 - self.dup_eps

    def mask(self, pos_ids: np.ndarray, cand_ids: np.ndarray, pos_vecs: torch.Tensor,
             cand_vecs: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """The combined mask on the vectors' device and the count of each part (numpy integers for numpy ids,
        else device tensors, so that the training step never waits for the GPU: read them when logging)."""
        parts = self.id_mask(pos_ids, cand_ids)  # numpy, or tensors on the ids' device (then no host copy)
        m = parts["pad"] | parts["self"] | parts["text"] | parts["window"]
        counts: dict[str, Any] = {k: v.sum() for k, v in parts.items() if k != "pad"}
        vec = self.vector_mask(pos_vecs.detach(), cand_vecs.detach())
        mt = to_device(m, vec.device)  # from numpy: through pinned memory, the step does not wait for the GPU
        counts["dupvec"] = (vec & ~mt).sum()
        return mt | vec, counts


class MemoryBankQueue:
    """A FIFO ring of the chunk ids of recent positives (bounded by ``size``). State is plain ints.

    Only ids are stored: vectors are re-read from the bank and passed through the current doc tower when
    used, so the queue never holds stale doc-tower outputs and resume state stays tiny.
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.ids = np.full(max(self.size, 0), -1, dtype=np.int64)
        self.ptr = 0

    def __len__(self) -> int:
        return int((self.ids >= 0).sum())

    def current(self) -> np.ndarray:
        return self.ids[self.ids >= 0].copy()

    def push(self, ids: np.ndarray) -> None:
        if self.size <= 0:
            return
        for i in np.asarray(ids, np.int64)[-self.size:]:
            self.ids[self.ptr] = i
            self.ptr = (self.ptr + 1) % self.size

    def state_dict(self) -> dict:
        return {"ids": self.ids.tolist(), "ptr": int(self.ptr), "size": self.size}

    def load_state_dict(self, d: dict) -> None:
        if int(d["size"]) != self.size:
            raise ValueError(f"memory bank size changed ({d['size']} -> {self.size})")
        self.ids = np.asarray(d["ids"], dtype=np.int64)
        self.ptr = int(d["ptr"])


class InfoNCELoss(nn.Module):
    """InfoNCE with temperature ``tau`` (default 0.05) and a cosine-unit ``margin`` on the positive."""

    def __init__(self, tau: float = 0.05, margin: float = 0.0):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.margin = float(margin)

    def forward(self, q: torch.Tensor, pos: torch.Tensor, neg_sets: list[tuple[torch.Tensor, torch.Tensor]]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return info_nce(q, pos, neg_sets, tau=self.tau, margin=self.margin)


def info_nce(q: torch.Tensor, pos: torch.Tensor, neg_sets: list[tuple[torch.Tensor, torch.Tensor]], *,
             tau: float, margin: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The one InfoNCE of both tasks (the retriever's loss, the LVM's contrastive term).

    ``q``, ``pos``: [B, D] unit. ``neg_sets``: (vectors [K, D] shared or [B, K, D] per sample, mask [B, K]
    bool, True = excluded). Returns the mean loss and stats (0-d tensors on q's device: the trainer reads them
    only when it logs, so a step never waits for the GPU): ``pos_cos``, ``n_neg`` (unmasked negatives per
    query) and ``acc`` (share of queries whose positive beats every negative)."""
    pos_cos = (q * pos).sum(-1)
    cols = [(pos_cos - margin)[:, None]]
    for vecs, mask in neg_sets:
        if vecs.numel() == 0:
            continue
        cos = q @ vecs.T if vecs.dim() == 2 else torch.einsum("bd,bkd->bk", q, vecs)
        cols.append(cos.masked_fill(mask, float("-inf")))
    # one scaling, one logsumexp and the stats over all sets at once (the step is launch-bound on a GPU)
    z = torch.cat(cols, dim=1).float() / tau
    loss = (torch.logsumexp(z, dim=1) - z[:, 0]).mean()
    negs = z[:, 1:].detach()  # -inf where masked
    best = negs.max(1).values if negs.shape[1] else torch.full_like(z[:, 0], float("-inf"))
    stats = {"pos_cos": pos_cos.detach().mean(), "n_neg": torch.isfinite(negs).sum(1).float().mean(),
             "acc": (pos_cos.detach().float() / tau > best).float().mean()}
    return loss, stats
