"""Query towers and doc towers for the two-tower retriever.

Every query tower outputs ``normalize(anchor + residual)``: the anchor is a heuristic query from
:func:`vecrag.scoring.heuristics.heuristic_query_torch` (``last`` vector by default, or ``ewma`` with
``alpha``; ``mean`` also works) and the residual comes from a learned head whose last linear layer is
zero-initialised. At step 0 the residual is exactly zero, so the tower's query equals the anchor and it
scores the anchor heuristic's recall (docs/design.md: start from the baseline, learn the correction).

Query towers (``kind``): ``gru`` (default), ``lstm``, ``transformer`` (causal, learned positions) and
``mean_mlp``. Inputs are right-aligned contexts ``ctx`` float [n, L, D] with a bool ``mask`` [n, L]
(column L-1 is always the most recent chunk, see :mod:`vecrag.bank.sequences`).

Doc towers: ``identity`` (default; bank vectors are used as they are, so the search index over the bank
is the doc index) and ``mlp`` (``normalize(x + MLP(x))``, zero-initialised, so it starts as the
identity). With the ``mlp`` doc tower the bank must be re-encoded before evaluation: every
validation/evaluation pass runs the doc tower over all N bank vectors (2 x N x D x H multiply-adds;
measured 12 s for 200k 384-D vectors with H = 256 on the shared, loaded 2-core CPU, i.e. about a minute
per million; seconds on a GPU), holds an N x D float32 copy (1.5 GB per million 384-D vectors) and
searches it exactly (a saved FAISS index of the raw bank no longer applies). Mining keeps searching the
raw bank (an approximation of the doc-side geometry), as does the memory bank's id lookup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vecrag.errors import VecragError
from vecrag.scoring.heuristics import HEURISTICS, heuristic_query_torch

QUERY_TOWERS = ("gru", "lstm", "transformer", "mean_mlp")
DOC_TOWERS = ("identity", "mlp")


@dataclass
class TowerConfig:
    """Query and doc tower shape. ``anchor``/``alpha`` choose the heuristic the residual corrects."""

    kind: str = field(default="gru", metadata={"help": "the query tower: gru | lstm | transformer | mean_mlp"})
    anchor: str = field(default="last", metadata={"help": "the heuristic query the residual corrects: last | mean | "
                                                          "ewma"})
    alpha: float = field(default=0.5, metadata={"help": "ewma anchor: the chunk j steps before the end weighs "
                                                        "(1 - alpha)^j, in (0, 1] (1 = the last vector)"})
    hidden: int = field(default=256, metadata={"help": "features of the query tower (divisible by heads for "
                                                       "transformer)"})
    layers: int = field(default=1, metadata={"help": "recurrent or attention layers of the query tower"})
    heads: int = field(default=4, metadata={"help": "attention heads (transformer)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout in the query tower"})
    max_len: int = field(default=1024, metadata={"help": "learned positions of the transformer tower (>= "
                                                         "train.context)"})
    doc: str = field(default="identity", metadata={"help": "the doc tower: identity (bank vectors as they are) | mlp "
                                                           "(normalize(x + MLP(x)); re-encodes the bank to evaluate)"})
    doc_hidden: int = field(default=256, metadata={"help": "hidden features of the mlp doc tower"})

    def validate(self) -> None:
        if self.kind not in QUERY_TOWERS:
            raise VecragError(f"unknown query tower {self.kind!r}",
                              hint=f"model.kind: one of {', '.join(QUERY_TOWERS)}")
        if self.anchor not in HEURISTICS:
            raise VecragError(f"unknown anchor heuristic {self.anchor!r}",
                              hint=f"model.anchor: one of {', '.join(HEURISTICS)}")
        if not 0.0 < self.alpha <= 1.0:
            raise VecragError(f"model.alpha must be in (0, 1], got {self.alpha}")
        if self.doc not in DOC_TOWERS:
            raise VecragError(f"unknown doc tower {self.doc!r}", hint=f"model.doc: one of {', '.join(DOC_TOWERS)}")
        if self.kind == "transformer" and self.hidden % self.heads:
            raise VecragError(f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})")


def _zero_linear(i: int, o: int) -> nn.Linear:
    lin = nn.Linear(i, o)
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


class QueryTower(nn.Module):
    """normalize(anchor(ctx) + head(encoder(ctx))) with a zero-initialised head."""

    def __init__(self, dim: int, cfg: TowerConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.dim = dim
        h = cfg.hidden
        if cfg.kind in ("gru", "lstm"):
            rnn = nn.GRU if cfg.kind == "gru" else nn.LSTM
            self.rnn = rnn(dim, h, num_layers=cfg.layers, batch_first=True,
                           dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        elif cfg.kind == "transformer":
            self.inp = nn.Linear(dim, h)
            self.pos = nn.Embedding(cfg.max_len, h)
            nn.init.normal_(self.pos.weight, std=0.02)
            layer = nn.TransformerEncoderLayer(h, cfg.heads, 2 * h, cfg.dropout, batch_first=True, norm_first=True)
            self.enc = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        else:  # mean_mlp
            self.mlp = nn.Sequential(nn.Linear(dim, h), nn.GELU(), nn.Dropout(cfg.dropout))
        self.drop = nn.Dropout(cfg.dropout)
        self.head = _zero_linear(h, dim)

    def anchor(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return heuristic_query_torch(ctx, mask, self.cfg.anchor, self.cfg.alpha)

    def features(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        kind = self.cfg.kind
        x = ctx * mask.unsqueeze(-1).to(ctx.dtype)
        if kind in ("gru", "lstm"):
            out, _ = self.rnn(x)
            return out[:, -1, :]
        if kind == "transformer":
            n, L, _ = x.shape
            if L > self.cfg.max_len:
                raise VecragError(f"context length {L} exceeds the transformer's max_len {self.cfg.max_len}",
                                  hint="raise model.max_len or lower train.context")
            pos = torch.arange(L, device=x.device)
            z = self.inp(x) + self.pos(pos)[None]
            # causal + key padding; a padded slot may always see itself (no all-masked rows -> no NaN)
            causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
            allowed = causal[None] & mask[:, None, :]
            allowed = allowed | torch.eye(L, dtype=torch.bool, device=x.device)[None]
            bias = torch.zeros(n, L, L, dtype=z.dtype, device=x.device).masked_fill(~allowed, float("-inf"))
            bias = bias.repeat_interleave(self.cfg.heads, dim=0)
            return self.enc(z, mask=bias)[:, -1, :]
        m = mask.to(ctx.dtype)
        mean = (x.sum(1)) / m.sum(1, keepdim=True).clamp_min(1.0)
        return self.mlp(mean)

    def residual(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(ctx, mask)))

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.anchor(ctx, mask) + self.residual(ctx, mask), dim=-1)


class DocTower(nn.Module):
    """``identity`` (no parameters) or ``mlp``: normalize(x + MLP(x)), zero-initialised = identity at step 0."""

    def __init__(self, dim: int, kind: str = "identity", hidden: int = 256):
        super().__init__()
        if kind not in DOC_TOWERS:
            raise VecragError(f"unknown doc tower {kind!r}", hint=f"model.doc: one of {', '.join(DOC_TOWERS)}")
        self.kind = kind
        if kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), _zero_linear(hidden, dim))

    @property
    def is_identity(self) -> bool:
        return self.kind == "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "identity":
            return x
        return F.normalize(x + self.mlp(x), dim=-1)

    @torch.no_grad()
    def encode_bank(self, vectors, *, device: str | torch.device = "cpu", chunk: int = 65536) -> torch.Tensor:
        """Re-encode a whole bank (memmap or array, N x D) in chunks -> float32 [N, D] on ``device``."""
        import numpy as np

        out = torch.empty(vectors.shape[0], vectors.shape[1], dtype=torch.float32, device=device)
        for s in range(0, vectors.shape[0], chunk):
            x = torch.from_numpy(np.array(vectors[s:s + chunk], dtype=np.float32)).to(device)
            out[s:s + len(x)] = self(x)
        return out


class RetrieverModel(nn.Module):
    """The trainable two-tower pair (checkpointed as one module)."""

    def __init__(self, dim: int, cfg: TowerConfig):
        super().__init__()
        self.query = QueryTower(dim, cfg)
        self.doc = DocTower(dim, cfg.doc, cfg.doc_hidden)
