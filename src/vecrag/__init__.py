"""vecrag: vector-native generation with retrieval grounding.

Importing the package changes nothing in the process. The environment the numeric libraries read once, at load
time (``OMP_WAIT_POLICY=PASSIVE`` with a short ``GOMP_SPINCOUNT``, tokenizer parallelism off, JAX's GPU memory on
demand), is set by :func:`vecrag.configure_runtime`, which the ``vecrag`` command calls first; a script or notebook
calls it at its top, before numpy, torch or faiss are imported. See docs/bugs-and-fixes.md.
"""

from __future__ import annotations

# LATE_OMP_MODULES: the modules (numpy, torch, faiss) already imported when configure_runtime first ran.
from vecrag.runtime_env import LATE_OMP_MODULES as LATE_OMP_MODULES
from vecrag.runtime_env import configure_runtime as configure_runtime

__version__ = "0.1.0"

# The public API (docs/api.md), imported on first use so that `import vecrag` stays light.
_API = {"Bank": "vecrag.api", "Hit": "vecrag.api", "LVM": "vecrag.api", "Retriever": "vecrag.api",
        "Generator": "vecrag.api", "search": "vecrag.api", "train_retriever": "vecrag.api",
        "train_lvm": "vecrag.api", "evaluate": "vecrag.api", "VecragError": "vecrag.errors"}
__all__ = ["__version__", "configure_runtime", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'vecrag' has no attribute {name!r}")
