"""Search a bank for texts or vectors and get typed hits back (:class:`Hit`: id, score, article, title, position,
text), as `vecrag search`, ``POST /search`` and ``vecrag.Bank.search`` do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vecrag.errors import VecragError


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk's id (its row in the bank), cosine score, article and text."""

    id: int
    score: float
    article_id: int
    title: str
    position: int
    text: str


def _title_lookup(bank: Any) -> dict[int, str]:
    arts = bank.articles
    return dict(zip(arts.column("article_id").to_pylist(), arts.column("title").to_pylist(), strict=True))


def search(bank: Any, query: str | Sequence[str] | np.ndarray, k: int = 10, *, device: str = "cpu",
           backend: str = "auto") -> list[list[Hit]]:
    """Top-``k`` chunks for each query: a text, a list of texts (embedded with the bank's encoder), or unit
    vectors [n, D] / [D]. One list of hits per query, best first (``Bank.search`` calls this)."""
    from vecrag.index.load import open_index

    if isinstance(query, str) or (isinstance(query, Sequence) and query and isinstance(query[0], str)):
        texts = [query] if isinstance(query, str) else list(query)
        if any(not t.strip() for t in texts):
            raise VecragError("a query text is empty (an empty text has no meaning to search for)")
        from vecrag.bank.encode import load_encoder

        enc = load_encoder(bank.encoder["name"], device=device)
        bank.check_encoder(enc.info.name, enc.info.dim)
        q = enc.encode(texts)
    else:
        q = np.asarray(query, np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != bank.dim:
            raise VecragError(f"query vectors must be [n, {bank.dim}] (this bank's dimension), got {q.shape}")
        if not np.isfinite(q).all():
            raise VecragError("query vectors contain NaN or Inf")
    if not 1 <= k:
        raise VecragError(f"k must be >= 1, got {k}")
    k = min(int(k), bank.n)
    scores, ids = open_index(bank, backend=backend, device=device).search(np.ascontiguousarray(q, np.float32), k)
    titles = _title_lookup(bank)
    out = []
    for srow, irow in zip(scores.tolist(), ids.tolist(), strict=True):
        hits = []
        for s, i in zip(srow, irow, strict=True):
            if i < 0:
                break
            a = int(bank.article_of[i])
            hits.append(Hit(int(i), float(s), a, titles.get(a, ""), int(bank.position_of[i]), bank.texts[i]))
        out.append(hits)
    return out
