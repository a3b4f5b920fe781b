"""vecrag: vector-native generation with retrieval grounding.

Importing the package sets the process environment that the numeric libraries read once, at load time:
``OMP_WAIT_POLICY=PASSIVE`` (two OpenMP runtimes, torch's and faiss's, spin against each other without it:
measured 25 -> 1 step/s with a faiss thread searching beside training on 2 cores) with a short spin
(``GOMP_SPINCOUNT=10000``: sleeping at once made CPU training 2-4x slower), tokenizer parallelism off,
the Hugging Face hub offline and JAX's GPU memory on demand (not 75 % of the GPU at its first use), unless the
user set otherwise. See docs/bugs-and-fixes.md.
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

_ENV_DEFAULTS = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "KMP_WARNINGS": "0",
    # bm25s (the BM25 baseline) imports JAX when it is installed and runs a top-k at import: JAX's default then
    # reserves 75 % of the GPU's memory for the rest of the process (109 GB of an H200 held by `eval baselines`
    # beside four trainers, docs/bugs-and-fixes.md). Allocate on demand instead.
    "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
}
for _k, _v in _ENV_DEFAULTS.items():
    os.environ.setdefault(_k, _v)
# PASSIVE alone puts each idle OpenMP worker to sleep at once, and waking it costs every small op of a training
# step: 2-4x slower CPU training on 2 cores. A short spin (10,000 iterations, ~0.1 ms) keeps the workers warm
# between the ops of one step and still yields the cores to the other runtime (benchmarks/omp_spin.py).
# Only with PASSIVE: a user who chose another policy keeps libgomp's own spin for it.
if os.environ["OMP_WAIT_POLICY"].upper() == "PASSIVE":
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

# Modules whose OpenMP runtime was already initialised before we could set the policy.
LATE_OMP_MODULES = sorted(m for m in ("numpy", "torch", "faiss") if m in sys.modules)

# The public API (docs/api.md), imported on first use so that `import vecrag` stays light.
_API = {"Bank": "vecrag.bank", "Hit": "vecrag.api", "LVM": "vecrag.api", "Retriever": "vecrag.api",
        "Generator": "vecrag.api", "search": "vecrag.api", "VecragError": "vecrag.errors"}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vecrag' has no attribute {name!r}")
