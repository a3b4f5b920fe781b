"""A prompt as the decoder sees it: text split with the bank's chunker settings and embedded with its encoder."""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from vecrag.errors import VecragError

log = logging.getLogger(__name__)


def split_prompt(bank: Any, text: str) -> tuple[list[str], str]:
    """Chunks of ``text`` with the bank's chunker settings; (chunks, how they were made)."""
    settings = dict(bank.manifest.get("chunker") or {})
    try:
        import dataclasses

        from vecrag.corpus import Chunker, ChunkerConfig

        known = {f.name for f in dataclasses.fields(ChunkerConfig)}
        dropped = sorted(set(settings) - known)  # descriptive keys (e.g. "kind") are not constructor args
        if dropped:
            log.debug("chunker settings not passed to ChunkerConfig: %s", dropped)
        try:
            chunker = Chunker(ChunkerConfig(**{k: v for k, v in settings.items() if k in known}))
        except (TypeError, ValueError) as e:
            raise VecragError(f"the bank's chunker settings {settings} are not usable ({e})", path=bank.path,
                              hint="rebuild the bank, or pass --prompt-ids") from e
        chunks = [c for c in chunker.chunk(text) if c.strip()]
        how = "bank chunker" if settings else "default chunker (the bank records no chunker settings)"
    except ImportError:
        chunks = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
        how = "simple sentence split (vecrag.corpus chunker not available)"
        log.warning("the chunker is unavailable: prompt split on sentence ends instead")
    if not chunks:
        raise VecragError("the prompt is empty after chunking", hint='pass some text: --prompt "..."')
    return chunks, how


def embed_prompt(bank: Any, chunks: list[str], device: str = "cpu") -> np.ndarray:
    from vecrag.bank.encode import load_encoder

    enc = load_encoder(bank.encoder["name"], device=device)
    bank.check_encoder(enc.info.name, enc.info.dim)
    return enc.encode(chunks)


def prompt_embedder(bank: Any, device: str = "cpu") -> Any:
    """text -> (chunks, unit vectors), with the bank's chunker and encoder (loaded once)."""
    from vecrag.bank.encode import load_encoder

    enc = load_encoder(bank.encoder["name"], device=device)
    bank.check_encoder(enc.info.name, enc.info.dim)

    def embed(text: str) -> tuple[list[str], np.ndarray]:
        chunks, _ = split_prompt(bank, text)
        return chunks, enc.encode(chunks)

    return embed


def parse_ids(bank: Any, spec: str) -> list[int]:
    try:
        ids = [int(x) for x in spec.replace(" ", "").split(",") if x]
    except ValueError as e:
        raise VecragError(f"--prompt-ids must be comma-separated chunk ids, got {spec!r}") from e
    bad = [i for i in ids if not 0 <= i < bank.n]
    if not ids or bad:
        raise VecragError(f"--prompt-ids: ids must be in 0..{bank.n - 1}" + (f", got {bad[:5]}" if bad else ""))
    return ids
