"""Process set-up: `import vecrag` changes nothing; `vecrag.configure_runtime()` (called by the CLI) sets the
OpenMP environment; host-to-device copies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "TOKENIZERS_PARALLELISM", "KMP_WARNINGS",
                "XLA_PYTHON_CLIENT_PREALLOCATE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter whose environment has none of vecrag's variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in RUNTIME_VARS}
    return subprocess.run([sys.executable, "-c", code], env={**base, "PYTHONPATH": str(ROOT / "src"), **env},
                          capture_output=True, text=True, check=True, timeout=120)


def test_import_vecrag_leaves_the_environment_unchanged():
    """Importing the package (and its light modules) sets nothing, the hub included."""
    code = ("import json, os; before = dict(os.environ); "
            "import vecrag, vecrag.bank.encode, vecrag.runtime, vecrag.errors; "
            "after = dict(os.environ); "
            "print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after) "
            "if before.get(k) != after.get(k)})); print(json.dumps(vecrag.LATE_OMP_MODULES))")
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, check=True,
                         timeout=120).stdout.splitlines()
    assert json.loads(out[0]) == {}
    assert json.loads(out[1]) == []  # configure_runtime has not run


def _configure(*, offline: str = "None", **env: str) -> dict:
    code = ("import json, os, vecrag; "
            f"got = vecrag.configure_runtime(offline={offline}); again = vecrag.configure_runtime(); "
            f"print(json.dumps([got, again, {{k: os.environ.get(k) for k in {RUNTIME_VARS!r}}}]))")
    got, again, env_after = json.loads(_python(code, **env).stdout)
    return {"set": got, "again": again, "env": env_after}


def test_configure_runtime_sets_the_defaults_and_returns_them():
    r = _configure()
    want = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000", "TOKENIZERS_PARALLELISM": "false",
            "KMP_WARNINGS": "0", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert r["set"] == want
    assert r["again"] == {}  # a second call has nothing left to set
    assert r["env"] == {**want, "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None}  # the hub stays online


@pytest.mark.parametrize(("env", "policy", "spin"), [
    ({"OMP_WAIT_POLICY": "passive"}, "passive", "10000"),   # the Makefile's, any case
    ({"GOMP_SPINCOUNT": "0"}, "PASSIVE", "0"),              # the user's spin wins
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE", None),        # another policy: libgomp's own spin
])
def test_configure_runtime_sets_a_short_openmp_spin_only_with_passive(env, policy, spin):
    r = _configure(**env)
    assert (r["env"]["OMP_WAIT_POLICY"], r["env"]["GOMP_SPINCOUNT"]) == (policy, spin)
    assert not set(env) & set(r["set"])  # what the user set is neither replaced nor reported as set
    assert ("GOMP_SPINCOUNT" in r["set"]) == (spin == "10000")


def test_configure_runtime_respects_the_users_values():
    """bm25s imports JAX when installed; by default JAX then reserves 75 % of the GPU (109 GB on an H200):
    configure_runtime turns that off, unless the user asked for it (as for every variable it sets)."""
    user = {"XLA_PYTHON_CLIENT_PREALLOCATE": "true", "TOKENIZERS_PARALLELISM": "true", "KMP_WARNINGS": "1"}
    r = _configure(**user)
    assert {k: r["env"][k] for k in user} == user
    assert r["set"] == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}


@pytest.mark.parametrize(("offline", "env", "want"), [
    ("True", {}, "1"),
    ("False", {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}, "0"),  # an explicit choice replaces them
])
def test_configure_runtime_offline_is_explicit(offline, env, want):
    r = _configure(offline=offline, **env)
    assert r["env"]["HF_HUB_OFFLINE"] == r["env"]["TRANSFORMERS_OFFLINE"] == want
    assert r["set"]["HF_HUB_OFFLINE"] == r["set"]["TRANSFORMERS_OFFLINE"] == want
    assert "HF_HUB_OFFLINE" not in r["again"]  # offline=None leaves the hub alone


def test_configure_runtime_called_after_torch_warns_once():
    code = ("import json, logging, torch, vecrag; logging.basicConfig(level=logging.INFO); "
            "vecrag.configure_runtime(); vecrag.configure_runtime(); "
            "from vecrag.runtime_env import policy_set_late; "
            "print(json.dumps([vecrag.LATE_OMP_MODULES, policy_set_late()]))")
    p = _python(code)
    late, policy_late = json.loads(p.stdout)
    assert "torch" in late and policy_late
    assert p.stderr.count("configure_runtime() ran after an OpenMP runtime had loaded") == 1
    # the user's own policy, exported before Python started, reached the runtimes: nothing to warn about
    p = _python(code, OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT="10000")
    assert json.loads(p.stdout)[1] is False and "ran after" not in p.stderr


def test_the_cli_configures_the_runtime_before_torch_or_faiss_load():
    """`vecrag` calls configure_runtime() at the top of vecrag.cli, before its commands import anything heavy."""
    code = ("import json, os, vecrag.cli, vecrag; "
            "print(json.dumps([os.environ.get('OMP_WAIT_POLICY'), vecrag.LATE_OMP_MODULES]))")
    policy, late = json.loads(_python(code).stdout)
    assert policy == "PASSIVE" and not {"torch", "faiss"} & set(late)


def test_a_late_policy_is_reported_as_not_in_effect(monkeypatch, caplog):
    """report_openmp (run by the commands) warns when PASSIVE was set only after the runtimes had loaded."""
    import logging

    from vecrag import runtime, runtime_env

    libs = ["/x/libgomp.so.1", "/y/libgomp-e985bcbb.so.1.0.0"]
    monkeypatch.setattr(runtime, "openmp_runtimes", lambda: libs)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setitem(runtime_env._state, "policy_late", True)
    with caplog.at_level(logging.INFO, logger="vecrag.runtime"):
        assert runtime.report_openmp() == libs
    recs = [r for r in caplog.records if "2 OpenMP runtimes" in r.getMessage()]
    assert len(recs) == 1 and recs[0].levelno == logging.WARNING and "set only after" in recs[0].getMessage()


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
