"""Extension point: vector -> text inverters for BLEND / NOVEL steps (optional).

vecrag itself never needs an inverter: SNAP steps print the bank chunk's text, BLEND steps the text of the
chunk they blend with and NOVEL steps the nearest bank chunk's, both marked "(approx)". An inverter adds
generated text for the emitted vector, e.g.
vec2text (https://github.com/jxmorris12/vec2text) for banks built with GTR-T5 (its corrector models are
trained for ``sentence-transformers/gtr-t5-base`` embeddings; they do not apply to MiniLM banks).

Write a class that satisfies :class:`VectorInverter` and select it with either

- ``vecrag generate ... --inverter my_package.my_module:MyInverter`` (``module:Class``), or
- an entry point in the group ``vecrag.inverters`` (``--inverter NAME``), e.g. in ``pyproject.toml``::

      [project.entry-points."vecrag.inverters"]
      vec2text-gtr = "my_package.inverters:Vec2TextGTR"

The class is constructed as ``Class(encoder=<bank manifest encoder dict>)`` and may refuse a bank whose
encoder it was not trained for by raising ``VecragError``. A configured inverter that cannot be imported
is an error (never silently skipped).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vecrag.errors import VecragError

ENTRY_POINT_GROUP = "vecrag.inverters"


@runtime_checkable
class VectorInverter(Protocol):
    """Turns unit vectors [n, D] (in the bank's embedding space) into n strings."""

    def invert(self, vectors: np.ndarray) -> list[str]: ...


def _resolve(spec: str) -> Any:
    if ":" in spec:
        mod_name, _, cls_name = spec.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise VecragError(f"inverter module {mod_name!r} cannot be imported ({e})",
                              hint="install the package that provides it, or drop --inverter") from e
        cls = getattr(mod, cls_name, None)
        if cls is None:
            raise VecragError(f"inverter module {mod_name!r} has no attribute {cls_name!r}",
                              hint="use --inverter module.path:ClassName")
        return cls
    eps = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if spec not in eps:
        have = ", ".join(sorted(eps)) or "none installed"
        raise VecragError(f"no inverter named {spec!r} in entry point group {ENTRY_POINT_GROUP} ({have})",
                          hint="use --inverter module.path:ClassName, or install a package that registers it")
    try:
        return eps[spec].load()
    except ImportError as e:
        raise VecragError(f"inverter {spec!r} is registered but cannot be imported ({e})",
                          hint="reinstall the package that provides it") from e


def load_inverter(spec: str | None, encoder: dict[str, Any] | None = None) -> VectorInverter | None:
    """The configured inverter, or None when ``spec`` is empty."""
    if not spec:
        return None
    cls = _resolve(spec)
    inv = cls(encoder=encoder or {})
    if not callable(getattr(inv, "invert", None)):
        raise VecragError(f"inverter {spec!r} has no invert(vectors) method",
                          hint="implement vecrag.decode.inverter.VectorInverter")
    return inv
