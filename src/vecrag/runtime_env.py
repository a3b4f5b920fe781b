"""The process environment vecrag's numeric work wants, applied on request: ``vecrag.configure_runtime()``.

``import vecrag`` changes nothing in the process. The ``vecrag`` command calls :func:`configure_runtime` first
thing (before numpy, torch or faiss load); a script or notebook that wants the same set-up calls it itself, at
its top. See docs/bugs-and-fixes.md for the measurements behind each setting.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# Libraries that start an OpenMP runtime (or a BLAS with its own threads) when imported; the runtime reads
# OMP_WAIT_POLICY / GOMP_SPINCOUNT once, at that moment.
OMP_MODULES = ("numpy", "torch", "faiss")

ENV_DEFAULTS: dict[str, str] = {
    # Two OpenMP runtimes (torch's and faiss's wheels each bring one) spin against each other without it:
    # 25 -> 1 step/s with a faiss thread searching beside training on 2 cores.
    "OMP_WAIT_POLICY": "PASSIVE",
    # The tokenizers library's own thread pool, beside torch's, and its fork warning in data loaders.
    "TOKENIZERS_PARALLELISM": "false",
    # Intel's OpenMP prints a deprecation warning per process about settings it does not know.
    "KMP_WARNINGS": "0",
    # bm25s (the BM25 baseline) imports JAX when it is installed and runs a top-k at import: JAX's default then
    # reserves 75 % of the GPU's memory for the rest of the process (109 GB of an H200 held by `eval baselines`
    # beside four trainers, docs/bugs-and-fixes.md). Allocate on demand instead.
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}
# PASSIVE alone puts each idle OpenMP worker to sleep at once, and waking it costs every small op of a training
# step: 2-4x slower CPU training on 2 cores. A short spin (10,000 iterations, ~0.1 ms) keeps the workers warm
# between the ops of one step and still yields the cores to the other runtime (benchmarks/omp_spin.py).
# Only with PASSIVE: a user who chose another policy keeps libgomp's own spin for it.
GOMP_SPINCOUNT = "10000"
HUB_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")

# Which of OMP_MODULES had been imported (so had initialised their OpenMP runtime) when configure_runtime first
# ran: the settings it applied do not reach them. Empty until it runs; filled in place, so ``vecrag.LATE_OMP_MODULES``
# is this same list.
LATE_OMP_MODULES: list[str] = []
_state: dict[str, bool] = {"ran": False, "warned_late": False, "policy_late": False}


def configure_runtime(*, offline: bool | None = None) -> dict[str, str]:
    """Set the environment variables vecrag's numeric work relies on, unless the user set them; return those set.

    Call it at the very top of a script or notebook, **before numpy, torch or faiss are imported** (before
    ``import vecrag.bank.store`` or any module that imports them): OpenMP runtimes read their settings once, when they
    load, so a later call has no effect on them (it logs one warning saying so). The ``vecrag`` command calls it
    for you. Each variable is set only when absent (``os.environ.setdefault``), so a value the user exported wins:

    - ``OMP_WAIT_POLICY=PASSIVE``, and with it ``GOMP_SPINCOUNT=10000`` (only when the policy is PASSIVE, in
      either letter case): torch's and faiss's OpenMP runtimes otherwise spin against each other, and a zero spin
      makes CPU training 2-4x slower;
    - ``TOKENIZERS_PARALLELISM=false`` and ``KMP_WARNINGS=0``;
    - ``XLA_PYTHON_CLIENT_PREALLOCATE=false``: JAX (imported by bm25s when installed) allocates GPU memory on
      demand instead of reserving 75 % of the GPU.

    The Hugging Face hub is left as the user set it: vecrag's bundled default encoder loads from its local folder
    without the hub either way. ``offline=True`` puts the hub offline (``HF_HUB_OFFLINE=1``,
    ``TRANSFORMERS_OFFLINE=1``), ``offline=False`` online (``0``); being an explicit choice, it replaces the
    user's values. huggingface_hub reads them when it is imported, so this too must come first.

    Calling it again is harmless: it sets only what is still missing and returns that.
    """
    present = sorted(m for m in OMP_MODULES if m in sys.modules)
    if not _state["ran"]:
        LATE_OMP_MODULES[:] = present
        _state["ran"] = True
    applied: dict[str, str] = {}
    for key, value in ENV_DEFAULTS.items():
        if key not in os.environ:
            os.environ[key] = applied[key] = value
    if os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE" and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = applied["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    if offline is not None:
        value = "1" if offline else "0"
        for key in HUB_OFFLINE_VARS:
            if os.environ.get(key) != value:
                os.environ[key] = applied[key] = value
        if any(k in applied for k in HUB_OFFLINE_VARS) and "huggingface_hub" in sys.modules:
            log.warning("configure_runtime(offline=%s) ran after huggingface_hub was imported; it read "
                        "HF_HUB_OFFLINE at import and keeps its earlier setting. Call configure_runtime() first.",
                        offline)
    omp_applied = [f"{k}={applied[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in applied]
    loaded = _openmp_loaded(present) if omp_applied else []
    if loaded:
        _state["policy_late"] = _state["policy_late"] or "OMP_WAIT_POLICY" in applied
        if not _state["warned_late"]:
            _state["warned_late"] = True
            log.warning("vecrag.configure_runtime() ran after an OpenMP runtime had loaded (%s): it read its "
                        "settings then, so %s does not apply to it. Call configure_runtime() before importing "
                        "numpy, torch or faiss, or export OMP_WAIT_POLICY=PASSIVE before starting Python.",
                        ", ".join(loaded), " ".join(omp_applied))
    return applied


def _openmp_loaded(present: list[str]) -> list[str]:
    """The OpenMP runtimes already in the process (Linux: the mapped libraries; elsewhere: the modules of
    OMP_MODULES already imported, numpy aside, whose usual wheels bring no OpenMP)."""
    if os.path.exists("/proc/self/maps"):
        return [os.path.basename(lib) for lib in openmp_runtimes()]
    return [m for m in present if m != "numpy"]


def policy_set_late() -> bool:
    """Whether configure_runtime set OMP_WAIT_POLICY after torch or faiss had loaded their OpenMP runtime (so the
    variable reads PASSIVE but the runtimes already running never saw it)."""
    return bool(_state["policy_late"])


def openmp_runtimes() -> list[str]:
    """Distinct OpenMP runtime libraries mapped into this process (Linux; empty elsewhere)."""
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return []
    names = set()
    for line in maps.read_text().splitlines():
        lib = line.rsplit(" ", 1)[-1]
        base = os.path.basename(lib)
        if any(k in base for k in ("libgomp", "libiomp", "libomp")):
            names.add(lib)
    return sorted(names)
