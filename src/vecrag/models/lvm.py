"""Latent vector models (LVMs): the previous chunk vectors of an article -> the next chunk vector.

Every architecture outputs ``normalize(anchor + residual)``. The anchor is a heuristic over the context
(:func:`vecrag.scoring.heuristics.heuristic_query_torch`: ``last``, ``mean`` or ``ewma`` with ``alpha``); the
residual comes from a body that summarises the context into ``hidden`` features and a ZERO-initialised
linear head, so at step 0 the model predicts exactly the anchor (docs/design.md: start from the baseline,
learn the correction). Inputs are right-aligned contexts ``ctx`` float [n, L, D] with a bool ``mask``
[n, L] (column L-1 is the most recent chunk; padded slots are zeros and False); any D works.

Bodies (``kind``):
- ``gru``: stacked single-layer GRUs, each ``x = LayerNorm(x + GRU(x))`` (residual), run on packed
  sequences so padding never enters the recurrence; the summary is the state at the last real chunk.
- ``lstm``: a multi-layer LSTM on packed sequences; the summary is the last layer's final state.
- ``transformer``: pre-norm causal self-attention blocks with learned positions (column j = position j);
  padded keys are masked (each slot may always see itself, so no row is empty); the summary is column L-1.
- ``amn``: the "attention memory network" idea of the LNSP two-tower v4 report: the anchor (the baseline
  vector) asks a multi-head attention over the context; an MLP of [anchor features, attended context] is the correction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vecrag.errors import VecragError
from vecrag.scoring.heuristics import HEURISTICS, heuristic_query_torch

LVM_KINDS = ("gru", "lstm", "transformer", "amn")


@dataclass
class LVMModelConfig:
    """The LVM's shape (YAML section ``model``): ``normalize(anchor + residual)`` from a body of ``kind``."""

    kind: str = field(default="gru", metadata={"help": "the body: gru | lstm | transformer | amn"})
    anchor: str = field(default="ewma", metadata={"help": "the heuristic the residual corrects: last | mean | ewma"})
    alpha: float = field(default=0.5, metadata={"help": "ewma anchor: the chunk j steps before the end weighs "
                                                        "(1 - alpha)^j, in (0, 1] (1 = the last vector)"})
    hidden: int = field(default=256, metadata={"help": "features of the body's summary (divisible by heads for "
                                                       "transformer and amn)"})
    layers: int = field(default=2, metadata={"help": "stacked recurrent or attention layers"})
    heads: int = field(default=4, metadata={"help": "attention heads (transformer, amn)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout in the body, in [0, 1)"})

    def validate(self) -> None:
        if self.kind not in LVM_KINDS:
            raise VecragError(f"unknown LVM architecture model.kind={self.kind!r}",
                              hint=f"model.kind: one of {', '.join(LVM_KINDS)}")
        if self.anchor not in HEURISTICS:
            raise VecragError(f"unknown anchor heuristic model.anchor={self.anchor!r}",
                              hint=f"model.anchor: one of {', '.join(HEURISTICS)}")
        if not 0.0 < self.alpha <= 1.0:
            raise VecragError(f"model.alpha must be in (0, 1], got {self.alpha}")
        if self.hidden < 1 or self.layers < 1 or self.heads < 1:
            raise VecragError("model.hidden, model.layers and model.heads must be >= 1")
        if self.kind in ("transformer", "amn") and self.hidden % self.heads:
            raise VecragError(f"model.hidden ({self.hidden}) must be divisible by model.heads ({self.heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise VecragError(f"model.dropout must be in [0, 1), got {self.dropout}")


def _fp32(x: torch.Tensor) -> torch.autocast:
    return torch.autocast(device_type=x.device.type, enabled=False)


def left_align(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Right-aligned [n, L, H] -> left-aligned (real slots first, zeros after) for packed RNNs."""
    n, L, _ = x.shape
    src = torch.arange(L, device=x.device)[None, :] + (L - lengths)[:, None]
    valid = src < L
    out = torch.gather(x, 1, src.clamp(max=L - 1)[:, :, None].expand_as(x))
    return out * valid[:, :, None].to(x.dtype)


class GRUBody(nn.Module):
    def __init__(self, h: int, layers: int, dropout: float):
        super().__init__()
        self.rnns = nn.ModuleList(nn.GRU(h, h, batch_first=True) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(h) for _ in range(layers))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # left-aligned and unpacked: every layer is causal, so position lengths-1 never sees the padding after
        # it (packing needed the lengths on the host: a host-GPU sync per layer and step)
        lengths = mask.sum(1).clamp(min=1)
        x = left_align(x.float(), lengths)
        with _fp32(x):  # RNNs run in float32 even under bf16 autocast
            for rnn, norm in zip(self.rnns, self.norms, strict=True):
                out, _ = rnn(x)
                x = norm(x + self.drop(out))
        return x[torch.arange(x.shape[0], device=x.device), lengths - 1]


class LSTMBody(nn.Module):
    def __init__(self, h: int, layers: int, dropout: float):
        super().__init__()
        self.rnn = nn.LSTM(h, h, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.norm = nn.LayerNorm(h)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        lengths = mask.sum(1).clamp(min=1)  # left-aligned, unpacked: the top layer's output at lengths-1 (causal)
        with _fp32(x):
            out, _ = self.rnn(left_align(x.float(), lengths))
            return self.norm(out[torch.arange(out.shape[0], device=out.device), lengths - 1])


class Block(nn.Module):
    """Pre-norm multi-head self-attention + GELU MLP."""

    def __init__(self, h: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.mlp = nn.Sequential(nn.Linear(h, 4 * h), nn.GELU(), nn.Linear(4 * h, h), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        n, L, h = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, L, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(a.transpose(1, 2).reshape(n, L, h))
        return x + self.mlp(self.ln2(x))


class TransformerBody(nn.Module):
    def __init__(self, h: int, layers: int, heads: int, dropout: float, context: int):
        super().__init__()
        self.pos = nn.Embedding(context, h)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(h, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(h)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        if L > self.pos.num_embeddings:
            raise VecragError(f"context of {L} chunks is longer than the model's {self.pos.num_embeddings}")
        x = x + self.pos.weight[self.pos.num_embeddings - L:][None]   # right-aligned: last column = last position
        eye = torch.eye(L, dtype=torch.bool, device=x.device)
        causal = torch.tril(torch.ones(L, L, dtype=torch.bool, device=x.device))
        allowed = (causal[None] & mask[:, None, :]) | eye[None]           # [n, L, L]
        allowed = allowed[:, None]                                        # broadcast over heads
        for blk in self.blocks:
            x = blk(x, allowed)
        return self.norm(x[:, -1])


class AMNBody(nn.Module):
    """The anchor attends over the context; an MLP mixes anchor features and the attended context."""

    def __init__(self, dim: int, h: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, h)
        self.kv = nn.Linear(h, 2 * h)
        self.ln = nn.LayerNorm(h)
        mlp: list[nn.Module] = [nn.Linear(2 * h, h), nn.GELU(), nn.Dropout(dropout)]
        for _ in range(layers - 1):
            mlp += [nn.Linear(h, h), nn.GELU(), nn.Dropout(dropout)]
        self.mlp = nn.Sequential(*mlp)
        self.norm = nn.LayerNorm(h)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        n, L, h = x.shape
        hd = h // self.heads
        qa = self.q(anchor)
        q = qa.view(n, self.heads, 1, hd)
        k, v = self.kv(self.ln(x)).view(n, L, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # [n, heads, 1, hd]
        a = a.reshape(n, h)
        return self.norm(self.mlp(torch.cat([qa, a.to(qa.dtype)], dim=-1)))


class LVM(nn.Module):
    """normalize(anchor(ctx) + head(body(ctx))) with a zero-initialised head; unit vectors [n, dim]."""

    def __init__(self, dim: int, cfg: LVMModelConfig, context: int):
        super().__init__()
        cfg.validate()
        self.dim, self.cfg, self.context = dim, cfg, context
        h = cfg.hidden
        self.inp = nn.Sequential(nn.Linear(dim, h), nn.Dropout(cfg.dropout))
        if cfg.kind == "gru":
            self.body: nn.Module = GRUBody(h, cfg.layers, cfg.dropout)
        elif cfg.kind == "lstm":
            self.body = LSTMBody(h, cfg.layers, cfg.dropout)
        elif cfg.kind == "transformer":
            self.body = TransformerBody(h, cfg.layers, cfg.heads, cfg.dropout, context)
        else:
            self.body = AMNBody(dim, h, cfg.layers, cfg.heads, cfg.dropout)
        self.head = nn.Linear(h, dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def anchor(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return heuristic_query_torch(ctx, mask, self.cfg.anchor, self.cfg.alpha)

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if ctx.shape[-1] != self.dim:
            raise VecragError(f"context vectors are {ctx.shape[-1]}-D, the model expects {self.dim}-D",
                              hint="evaluate with the bank the model was trained on")
        ctx = ctx * mask[:, :, None].to(ctx.dtype)
        anchor = self.anchor(ctx, mask)
        x = self.inp(ctx)
        feats = self.body(x, mask, anchor) if isinstance(self.body, AMNBody) else self.body(x, mask)
        return F.normalize(anchor + self.head(feats).to(anchor.dtype), dim=-1)


def build_lvm(dim: int, cfg: LVMModelConfig, context: int) -> LVM:
    return LVM(dim, cfg, context)
