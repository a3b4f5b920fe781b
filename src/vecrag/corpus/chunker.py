"""Chunk an article into passages of 1-3 sentences under a character budget.

``Chunker(ChunkerConfig(...)).chunk(text) -> list[str]``; ``text`` is ONE article (paragraphs separated by
``"\\n"``), so a chunk never crosses an article. How:

1. each paragraph is split into sentences (``segment.make_segmenter``: sentencex by default, or pysbd);
2. a sentence longer than ``max_chars`` is cut on whitespace into near-equal pieces of at most
   ``max_chars`` (each piece then counts as one sentence); a single token longer than the budget (a URL,
   a formula) cannot be cut and stays whole: the only way a chunk exceeds ``max_chars``;
3. the sentences are grouped by dynamic programming (deterministic) into consecutive groups of at most
   ``max_sentences`` sentences and ``max_chars`` characters, minimising: one per chunk (so chunks are as
   full as the limits allow), a large penalty for a chunk shorter than ``min_chars`` or with fewer than
   ``min_sentences`` sentences (a fragment), a smaller penalty per paragraph boundary inside a chunk, and a
   tiny one for unbalanced lengths.

Paragraph policy (``respect_paragraphs=True``, the default): a chunk crosses a paragraph boundary only when
that avoids a fragment, e.g. a one-line paragraph of a few words is merged into its neighbour. With
``respect_paragraphs=False`` paragraphs are ignored and sentences are packed freely. A fragment that cannot
be merged within the limits (an article of one short sentence) is kept as it is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from vecrag.corpus.segment import SEGMENTERS, make_segmenter
from vecrag.errors import VecragError

_FRAGMENT_COST = 4.0
_PARAGRAPH_COST = 1.5
_BALANCE_COST = 0.01


@dataclass(frozen=True)
class ChunkerConfig:
    """Chunking parameters (recorded in the bank manifest through ``Chunker.config_dict()``)."""

    min_sentences: int = 1
    max_sentences: int = 3
    max_chars: int = 600
    min_chars: int = 40
    segmenter: str = "sentencex"
    language: str = "en"
    respect_paragraphs: bool = True

    def __post_init__(self) -> None:
        def bad(msg: str) -> VecragError:
            return VecragError(f"invalid chunker setting: {msg}", hint="defaults: min_sentences=1, "
                               "max_sentences=3, max_chars=600, min_chars=40, segmenter='sentencex'.")

        for name in ("min_sentences", "max_sentences", "max_chars", "min_chars"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise bad(f"{name} must be an integer, got {v!r}.")
        if self.min_sentences < 1:
            raise bad(f"min_sentences must be >= 1, got {self.min_sentences}.")
        if self.max_sentences < self.min_sentences:
            raise bad(f"max_sentences ({self.max_sentences}) must be >= min_sentences ({self.min_sentences}).")
        if self.max_chars < 20:
            raise bad(f"max_chars must be >= 20, got {self.max_chars}.")
        if not 0 <= self.min_chars < self.max_chars:
            raise bad(f"min_chars must be in [0, max_chars), got {self.min_chars} (max_chars {self.max_chars}).")
        if self.segmenter not in SEGMENTERS:
            raise bad(f"segmenter must be one of {SEGMENTERS}, got {self.segmenter!r}.")


def split_long(sentence: str, max_chars: int) -> list[str]:
    """Cut a sentence longer than ``max_chars`` on whitespace into near-equal pieces of <= max_chars
    (a single token longer than the budget is left whole)."""
    pieces: list[str] = []
    rest = sentence.strip()
    while len(rest) > max_chars:
        k = math.ceil(len(rest) / max_chars)
        target = math.ceil(len(rest) / k)
        before = rest.rfind(" ", 0, target + 1)
        after = rest.find(" ", target, max_chars + 1)
        options = [c for c in (before, after) if c > 0]
        if options:
            cut = min(options, key=lambda c: (abs(c - target), c))
        else:
            cut = rest.find(" ", max_chars)  # an unsplittable token: keep it whole
            if cut < 0:
                break
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        pieces.append(rest)
    return [p for p in pieces if p]


class Chunker:
    """Deterministic article chunker; see the module docstring for the rules."""

    def __init__(self, cfg: ChunkerConfig | None = None):
        self.cfg = cfg or ChunkerConfig()
        self._segment = make_segmenter(self.cfg.segmenter, self.cfg.language)

    def config_dict(self) -> dict:
        """The parameters that define the chunks, for the manifest."""
        return {"kind": "sentences-dp", **asdict(self.cfg)}

    def sentences(self, text: str) -> list[tuple[str, int]]:
        """(sentence or piece, paragraph index) for every sentence of the article."""
        out: list[tuple[str, int]] = []
        for p, par in enumerate(x for x in text.split("\n") if x.strip()):
            for sent in self._segment(par.strip()):
                for piece in split_long(sent, self.cfg.max_chars) if len(sent) > self.cfg.max_chars else [sent]:
                    out.append((piece, p))
        return out

    def chunk_sentences(self, text: str) -> list[list[str]]:
        """The chunks of one article as lists of their sentences (what ``chunk`` joins with spaces)."""
        items = self.sentences(text)
        if not items:
            return []
        cfg = self.cfg
        n = len(items)
        lens = [len(s) for s, _ in items]
        paras = [p for _, p in items]
        par_cost = _PARAGRAPH_COST if cfg.respect_paragraphs else 0.0
        best = [0.0] + [math.inf] * n
        back = [0] * (n + 1)
        for i in range(1, n + 1):
            length = -1
            for j in range(i - 1, max(0, i - cfg.max_sentences) - 1, -1):
                length += lens[j] + 1
                count = i - j
                if count > 1 and length > cfg.max_chars:
                    break
                cost = best[j] + 1.0 + par_cost * (paras[i - 1] - paras[j])
                if length < cfg.min_chars:
                    cost += _FRAGMENT_COST
                if count < cfg.min_sentences:
                    cost += _FRAGMENT_COST
                cost += _BALANCE_COST * (1.0 - min(length, cfg.max_chars) / cfg.max_chars) ** 2
                if cost < best[i]:
                    best[i], back[i] = cost, j
        groups: list[list[str]] = []
        i = n
        while i > 0:
            j = back[i]
            groups.append([s for s, _ in items[j:i]])
            i = j
        groups.reverse()
        return groups

    def chunk(self, text: str) -> list[str]:
        """The chunks of one article, in order (empty list for an empty article)."""
        return [" ".join(g) for g in self.chunk_sentences(text)]
