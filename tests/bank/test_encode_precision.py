"""$VECRAG_ENCODER_PRECISION: bf16 autocast on a CPU with native bfloat16 stays within cosine 0.9999 of fp32,
is deterministic, is recorded by ingest; a bad value is refused; fp32 stays the default."""

from __future__ import annotations

import numpy as np
import pytest

from tests.wiki_fixtures import real_encoder, wiki_bank, wiki_jsonl  # noqa: F401
from vecrag.bank import encode
from vecrag.errors import VecragError

TEXTS = [
    "The mitochondrion is the powerhouse of the cell.",
    "Paris is the capital and largest city of France. It has been a major centre of finance, diplomacy, "
    "commerce, fashion and science since the 17th century.",
    "The football match ended in a draw after extra time.",
    "x",
]


def test_default_is_fp32(real_encoder, monkeypatch):  # noqa: F811
    monkeypatch.delenv(encode.PRECISION_ENV, raising=False)
    assert encode.encoder_precision("cpu") == "fp32" and real_encoder.precision == "fp32"
    assert encode.encoder_precision("cuda:0") == "fp16"


def test_bad_value_is_refused(monkeypatch):
    monkeypatch.setenv(encode.PRECISION_ENV, "int8")
    with pytest.raises(VecragError, match="VECRAG_ENCODER_PRECISION"):
        encode.encoder_precision("cpu")


def test_bf16_only_with_native_support(monkeypatch):
    monkeypatch.setattr(encode, "_cpu_has_native_bf16", lambda: False)
    for want in ("bf16", "auto"):
        monkeypatch.setenv(encode.PRECISION_ENV, want)
        assert encode.encoder_precision("cpu") == "fp32"


@pytest.mark.skipif(not encode._cpu_has_native_bf16(), reason="CPU without native bfloat16 (AMX / AVX512-BF16)")
def test_bf16_vectors_match_fp32(real_encoder, monkeypatch):  # noqa: F811
    monkeypatch.setenv(encode.PRECISION_ENV, "auto")
    enc = encode.load_encoder(None, device="cpu")
    assert enc.precision == "bf16" and enc is not real_encoder
    a = enc.encode(TEXTS)
    assert np.array_equal(a, enc.encode(TEXTS))  # deterministic: resumable ingest relies on it
    cos = (a * real_encoder.encode(TEXTS)).sum(axis=1)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_ingest_records_the_precision(wiki_bank):  # noqa: F811
    assert wiki_bank.manifest["ingest"]["encoder_precision"] == "fp32"
