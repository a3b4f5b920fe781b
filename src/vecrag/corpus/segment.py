"""Sentence segmentation: ``sentencex`` (default) or ``pysbd``, applied one paragraph at a time.

Why sentencex by default (measured on the first 20 enwiki-2015 articles, 1,419 paragraphs, this 2-core
CPU): pysbd 0.3.4 segments about 1,100-1,600 sentences/s, sentencex (Wikimedia, compiled, maintained)
about 200,000/s, and the two disagree on 27 of 1,419 paragraphs, each making its own mistakes (pysbd splits
"c. AD 600", sentencex keeps "etc. A capital..." together). At 1.2 M sentences for the full corpus pysbd
alone would take ~15 minutes of CPU, longer than encoding it on a GPU. See docs/bugs-and-fixes.md.
"""

from __future__ import annotations

from collections.abc import Callable

from vecrag.errors import VecragError

SEGMENTERS = ("sentencex", "pysbd")

Segmenter = Callable[[str], list[str]]


def make_segmenter(name: str = "sentencex", language: str = "en") -> Segmenter:
    """A function paragraph -> list of stripped, non-empty sentences."""
    if name == "sentencex":
        try:
            import sentencex
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise VecragError("the sentence segmenter 'sentencex' is not installed.",
                              hint="pip install sentencex, or use ChunkerConfig(segmenter='pysbd').") from e

        def seg_sentencex(par: str) -> list[str]:
            return [s for s in (x.strip() for x in sentencex.segment(language, par)) if s]

        return seg_sentencex
    if name == "pysbd":
        try:
            import pysbd
        except ImportError as e:  # pragma: no cover - a declared dependency
            raise VecragError("the sentence segmenter 'pysbd' is not installed.",
                              hint="pip install pysbd, or use ChunkerConfig(segmenter='sentencex').") from e
        try:
            seg = pysbd.Segmenter(language=language, clean=False)
        except ValueError as e:
            raise VecragError(f"pysbd does not support language {language!r}.",
                              hint="use segmenter='sentencex' (about 300 languages).") from e

        def seg_pysbd(par: str) -> list[str]:
            return [s for s in (x.strip() for x in seg.segment(par)) if s]

        return seg_pysbd
    raise VecragError(f"unknown sentence segmenter {name!r}.", hint=f"use one of: {', '.join(SEGMENTERS)}.")
