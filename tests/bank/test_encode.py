"""The default encoder: load without the hub, shape, unit norms, determinism, recorded info, missing-model error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    from vecrag.bank.encode import load_encoder

    with pytest.raises(VecragError) as e:
        load_encoder("no-such-org/no-such-encoder-xyz", device="cpu")
    msg = str(e.value)
    assert "no-such-encoder-xyz" in msg and "--encoder" in msg and "local" in msg
    f = tmp_path / "model.bin"
    f.write_bytes(b"\x00")
    with pytest.raises(VecragError, match="not a model directory"):
        load_encoder(str(f), device="cpu")


# The default encoder in a fresh process with the hub online (no HF_HUB_OFFLINE) and no network: every socket
# connection or name look-up is refused and recorded, and the proxies / hub endpoint point at a closed port.
_NO_NETWORK = """
import json, os, socket
tried = []
def refuse(*args, **kwargs):
    tried.append(repr(args[1:])[:100])
    raise OSError("network blocked by the test")
socket.socket.connect = refuse
socket.getaddrinfo = refuse
from vecrag.bank.encode import load_encoder
enc = load_encoder(device="cpu")
import huggingface_hub.constants as hub
vecrag_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
print(json.dumps({"tried": tried, "hub_offline": hub.HF_HUB_OFFLINE, "env": vecrag_env,
                  "name": enc.info.name, "shape": list(enc.encode(["a sentence"]).shape)}))
"""


def test_default_encoder_loads_with_the_hub_online_and_no_network():
    """The bundled default loads from its folder (local_files_only) without asking the hub, and nothing
    puts the hub offline for the rest of the process."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(PYTHONPATH=str(root / "src"), HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9",
               HF_ENDPOINT="http://127.0.0.1:9")
    p = subprocess.run([sys.executable, "-c", _NO_NETWORK], env=env, capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads(p.stdout.splitlines()[-1])
    assert got["tried"] == []  # not one connection attempt
    assert got["hub_offline"] is False and got["env"] == {"HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None}
    assert (got["name"], got["shape"]) == ("all-MiniLM-L6-v2", [1, 384])
