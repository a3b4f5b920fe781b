"""The default encoder: offline load, shape, unit norms, determinism, recorded info, missing-model error."""

from __future__ import annotations

import numpy as np
import pytest

from tests.wiki_fixtures import real_encoder  # noqa: F401
from vecrag.errors import VecragError

TEXTS = [
    "The mitochondrion is the powerhouse of the cell.",
    "Cells produce energy in their mitochondria.",
    "The football match ended in a draw after extra time.",
    "Paris is the capital and largest city of France.",
    "x",
]


def test_shape_norm_dtype(real_encoder):  # noqa: F811
    v = real_encoder.encode(TEXTS)
    assert v.shape == (len(TEXTS), 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert real_encoder.encode([]).shape == (0, 384)


def test_deterministic_and_meaningful(real_encoder):  # noqa: F811
    a = real_encoder.encode(TEXTS, batch_size=32)
    b = real_encoder.encode(TEXTS, batch_size=32)
    assert np.array_equal(a, b)  # bit for bit: resumable ingest relies on it
    sims = a @ a.T
    assert sims[0, 1] > 0.5 > sims[0, 2] + 0.2  # paraphrase far closer than an unrelated sentence


def test_info(real_encoder):  # noqa: F811
    info = real_encoder.info
    assert (info.name, info.dim, info.pooling, info.normalize, info.max_seq_length) == (
        "all-MiniLM-L6-v2", 384, "mean", True, 256)
    assert real_encoder.device == "cpu"


def test_missing_model_says_what_to_do(tmp_path):
    from vecrag.encode import load_encoder

    with pytest.raises(VecragError) as e:
        load_encoder("no-such-org/no-such-encoder-xyz", device="cpu")
    msg = str(e.value)
    assert "no-such-encoder-xyz" in msg and "--encoder" in msg and "local" in msg
    f = tmp_path / "model.bin"
    f.write_bytes(b"\x00")
    with pytest.raises(VecragError, match="not a model directory"):
        load_encoder(str(f), device="cpu")
