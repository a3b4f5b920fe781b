"""Process set-up: the OpenMP environment `import vecrag` sets, and host-to-device copies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _env_after_import(**env: str) -> dict[str, str | None]:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import os, vecrag; print(os.environ.get('OMP_WAIT_POLICY')); "
            "print(os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", code], env={**base, "PYTHONPATH": str(ROOT / "src"), **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return {"policy": out[0], "spin": None if out[1] == "None" else out[1]}


@pytest.mark.parametrize(("env", "want"), [
    ({}, {"policy": "PASSIVE", "spin": "10000"}),                               # vecrag's defaults
    ({"OMP_WAIT_POLICY": "passive"}, {"policy": "passive", "spin": "10000"}),   # the Makefile's, any case
    ({"GOMP_SPINCOUNT": "0"}, {"policy": "PASSIVE", "spin": "0"}),              # the user's spin wins
    ({"OMP_WAIT_POLICY": "ACTIVE"}, {"policy": "ACTIVE", "spin": None}),        # another policy: libgomp's own
])
def test_import_sets_a_short_openmp_spin_only_with_passive(env, want):
    assert _env_after_import(**env) == want


@pytest.mark.parametrize(("env", "want"), [({}, "false"), ({"XLA_PYTHON_CLIENT_PREALLOCATE": "true"}, "true")])
def test_import_keeps_jax_from_reserving_the_gpu_unless_asked(env, want):
    """bm25s imports JAX when installed; by default JAX then reserves 75 % of the GPU (109 GB on an H200)."""
    base = {k: v for k, v in os.environ.items() if k != "XLA_PYTHON_CLIENT_PREALLOCATE"}
    code = "import os, vecrag; print(os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE'))"
    out = subprocess.run([sys.executable, "-c", code], env={**base, "PYTHONPATH": str(ROOT / "src"), **env},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == want


def test_to_device_on_the_cpu_is_the_same_array():
    from vecrag.runtime import priority_stream, to_device

    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    t = to_device(a, "cpu")
    assert t.device.type == "cpu" and torch.equal(t, torch.from_numpy(a))
    with priority_stream("cpu"):  # no stream off CUDA: a no-op context
        assert to_device(a[:, ::2], torch.device("cpu")).tolist() == [[0, 2], [4, 6], [8, 10]]
