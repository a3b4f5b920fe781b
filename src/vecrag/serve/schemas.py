"""Request and response models. Every bound is checked by pydantic before any compute runs (-> 422).

The vector dimension depends on the served bank, so it is checked in the handler against ``bank.dim``
(:func:`check_dim`) and reported in the same 422 format as pydantic's errors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, StringConstraints, model_validator

MAX_TEXT_CHARS = 4000
MAX_QUERIES = 64
MAX_CONTEXT = 1000
MAX_K = 1000
MAX_STEPS = 64
MAX_DIM = 8192

Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)]
Vector = Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_DIM)]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(Strict):
    """Exactly one of ``texts`` (encoded with the bank's encoder) or ``vectors`` (bank dimension)."""

    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_QUERIES)] | None = None
    vectors: Annotated[list[Vector], Field(min_length=1, max_length=MAX_QUERIES)] | None = None
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10

    @model_validator(mode="after")
    def _one_input(self) -> SearchRequest:
        if (self.texts is None) == (self.vectors is None):
            raise ValueError("give exactly one of 'texts' or 'vectors'")
        return self


class Hit(BaseModel):
    id: int
    score: float
    text: str
    title: str
    article_id: int
    position: int
    lane: str


class SearchResponse(BaseModel):
    k: int
    results: list[list[Hit]]
    took_ms: float


class NextRequest(Strict):
    """The context as chunk texts (encoded) or bank chunk ids, oldest first; the last item is the most recent."""

    context_texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_CONTEXT)] | None = None
    context_ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=MAX_CONTEXT)] | None = None
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 5
    profile: Name | None = None
    lane: Name | None = None
    never_back: bool = False  # drop a context article's chunks up to the furthest one in the context

    @model_validator(mode="after")
    def _one_input(self) -> NextRequest:
        if (self.context_texts is None) == (self.context_ids is None):
            raise ValueError("give exactly one of 'context_texts' or 'context_ids'")
        return self


class NextResponse(BaseModel):
    decision: Literal["SNAP", "BLEND", "NOVEL"]
    c: float | None
    lane: str
    chosen: Hit | None
    candidates: list[Hit]
    fallback: str | None = None
    details: dict[str, Any] = {}
    took_ms: float


class GenerateRequest(Strict):
    """A prompt (split with the bank's chunker); ``profile`` defaults to the server's (``/healthz``)."""

    prompt: Text
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 8
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 5
    profile: Name | None = None
    lane: Name | None = None
    never_back: bool = False  # never return to a visited article's earlier chunks (`vecrag generate --never-back`)


class GenerateResponse(BaseModel):
    """The steps (no chunk twice, none a prompt chunk) and ``continuation``: the steps' texts as one passage to
    read after ``prompt_chunks`` (as `vecrag generate`: SNAP text as is, BLEND/NOVEL text marked ``[~ ...]``)."""

    prompt: str
    prompt_chunks: list[str]
    steps: list[dict[str, Any]]
    continuation: str
    details: dict[str, Any] = {}
    took_ms: float


def check_dim(vectors: list[list[float]], dim: int, field: str = "vectors") -> list[dict[str, Any]]:
    """422-style error entries for vectors that are not the bank dimension, or that cannot be searched with:
    a value beyond float32's range (the bank and index are float32; such a vector's norm overflows) or all zeros
    (also after the conversion to float32: nothing to normalise)."""
    errs = []
    for i, v in enumerate(vectors):
        msg = _vector_problem(v, dim)
        if msg:
            errs.append({"type": "value_error", "loc": ["body", field, i], "msg": msg,
                         "input": len(v) if len(v) != dim else None})
    return errs


def _vector_problem(v: list[float], dim: int) -> str:
    if len(v) != dim:
        return f"vector has {len(v)} values, the bank's vectors have {dim}"
    with np.errstate(over="ignore", under="ignore"):
        x = np.asarray(v, dtype=np.float32)
    if not np.isfinite(x).all():
        return f"vector has values beyond float32's range (|x| <= {float(np.finfo(np.float32).max):.3g})"
    if not x.any():
        return "vector is all zeros" + ("" if not any(v) else " in float32 (every value is below its smallest)")
    return ""  # finite and not all zero in float32: its float64 norm is positive and finite (unit_vectors)


def unit_vectors(vectors: list[list[float]]) -> np.ndarray:
    """float32 [n, D] unit rows of vectors that passed :func:`check_dim` (normalised in float64: no overflow)."""
    x = np.asarray(vectors, dtype=np.float32).astype(np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
