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


def test_faiss_flat_search_uses_blas_from_a_few_queries_on_few_cores():
    """faiss 1.15's default (SIMD scan below nq * d = 128,000) made the CPU miner's 64-query searches 10x slower;
    vecrag replaces faiss's defaults only: an older faiss (threshold in queries) or a user's value stays."""
    from types import SimpleNamespace

    from vecrag.runtime import tune_faiss_flat

    f = SimpleNamespace(cvar=SimpleNamespace(distance_compute_blas_threshold=128_000,
                                             distance_compute_blas_database_bs=1024))
    tune_faiss_flat(f, 2)
    assert (f.cvar.distance_compute_blas_threshold, f.cvar.distance_compute_blas_database_bs) == (1600, 1024)
    tune_faiss_flat(f, 16)  # a later call with another thread count re-tunes its own values
    assert f.cvar.distance_compute_blas_threshold == 12_800
    f.cvar.distance_compute_blas_threshold = 5000  # the user's choice
    tune_faiss_flat(f, 2)
    assert f.cvar.distance_compute_blas_threshold == 5000
    old = SimpleNamespace(cvar=SimpleNamespace(distance_compute_blas_threshold=20,
                                               distance_compute_blas_database_bs=1024))
    tune_faiss_flat(old, 2)  # faiss < 1.15: the threshold counts queries; leave it
    assert (old.cvar.distance_compute_blas_threshold, old.cvar.distance_compute_blas_database_bs) == (20, 1024)


def test_set_threads_tunes_the_installed_faiss():
    import faiss

    from vecrag.runtime import set_threads

    set_threads(faiss_threads=2)
    if tuple(int(x) for x in faiss.__version__.split(".")[:2]) >= (1, 15):  # its nq * d rule
        assert faiss.cvar.distance_compute_blas_threshold == 1600
