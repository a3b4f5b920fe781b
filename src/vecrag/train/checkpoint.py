"""Atomic, checksummed training checkpoints, loadable with ``torch.load(weights_only=True)``.

Layout under ``RUN/checkpoints/``::

    step-<N>.pt             every ``ckpt_every`` optimizer steps (the last ``keep_last`` are kept)
    epoch-<E>-preval.pt     written at the end of epoch E, before its validation (last ``keep`` kept)
    last.pt                 the newest state (after each validation and at the end)
    best.pt                 the state with the best early-stopping score so far
    index.json              {file: {sha256, seq, step, epoch, batch, time}}, rewritten atomically

Every file is ONE complete trainer state (see ``Trainer.state_dict``), so resuming from any of them is
correct; resume picks the newest (highest ``seq``) file whose sha256 matches the index and falls back, with
a warning, to the next one when a file is missing, truncated or corrupt. When index.json itself is missing
or damaged, resume first rebuilds it from the files that load (``weights_only=True``), ordered by the state
they hold (step, epoch, batch, validation), and says so: intact checkpoints are never thrown away.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vecrag.errors import VecragError
from vecrag.fsutil import atomic_open, atomic_write_bytes, atomic_write_json, sha256_file

log = logging.getLogger(__name__)
INDEX = "index.json"
_STEP_RE = re.compile(r"^step-(\d+)\.pt$")
_PREVAL_RE = re.compile(r"^epoch-(\d+)-preval\.pt$")


# ---- RNG states as weights_only-safe values -------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) RNG states as tensors/lists."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d: not restored",
                        len(cuda), torch.cuda.device_count())


# ---- one file -------------------------------------------------------------------------------------------
def save_file(path: str | Path, state: dict[str, Any]) -> str:
    """torch.save to a temp file, fsync, rename; returns the sha256 of the bytes written."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    with atomic_open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def load_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with weights_only=True (never unpickles arbitrary objects)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise VecragError("checkpoint not found", path=path, hint="list RUN/checkpoints/") from e
    except Exception as e:  # truncated zip, bad pickle, unsupported global
        raise VecragError(f"cannot load checkpoint ({type(e).__name__}: {e})", path=path,
                          hint="the file is damaged; use another checkpoint of the run") from e


def state_order(name: str, state: dict[str, Any]) -> tuple:
    """How far along a checkpoint's state is (a rebuilt index's ``seq`` order): step, then epoch and batch
    (a post-validation state starts the next epoch at batch 0), then validation and end of training; between
    files of the same state, last.pt is preferred (best.pt and swa.pt may hold averaged or older weights)."""
    trainer = state.get("trainer") or {}
    kind = 4 if name == "last.pt" else 3 if _STEP_RE.match(name) else 2 if _PREVAL_RE.match(name) else \
        1 if name == "best.pt" else 0
    return (int(state.get("step", 0)), int(state.get("epoch", 0)), int(state.get("batch", 0)),
            int(trainer.get("validated", -1)), bool(trainer.get("finished", False)), kind)


# ---- the directory --------------------------------------------------------------------------------------
class CheckpointDir:
    """Writes, prunes, indexes and verifies the checkpoints of one run."""

    def __init__(self, root: str | Path, keep_last: int = 3, keep_preval: int = 3):
        self.root = Path(root)
        self.keep_last = keep_last
        self.keep_preval = keep_preval
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_problem: str | None = None          # "missing" | "damaged": resume rebuilds the index
        self.rebuilt: list[str] | None = None          # the files a rebuilt index holds (None: not rebuilt)
        self.rebuilt_reason: str | None = None          # why it was rebuilt ("missing" | "damaged")
        self.index: dict[str, dict[str, Any]] = self._read_index()

    def _read_index(self) -> dict[str, dict[str, Any]]:
        p = self.root / INDEX
        if not p.exists():
            self.index_problem = "missing"
            return {}
        try:
            files = json.loads(p.read_text(encoding="utf-8"))["files"]
            if not all(isinstance(e, dict) and isinstance(e.get("sha256"), str) for e in files.values()):
                raise TypeError("an entry without a sha256")
            return dict(files)
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            log.warning("%s is damaged (%s: %s)", p, type(e).__name__, e)
            self.index_problem = "damaged"
            return {}

    def _write_index(self) -> None:
        atomic_write_json(self.root / INDEX, {"files": self.index})
        self.index_problem = None

    def _next_seq(self) -> int:
        return 1 + max((int(e.get("seq", 0)) for e in self.index.values()), default=0)

    def path(self, name: str) -> Path:
        return self.root / name

    def save(self, name: str, state: dict[str, Any], *, seq: int | None = None) -> Path:
        """Write one checkpoint atomically and record its sha256; prune old step/preval files."""
        p = self.root / name
        digest = save_file(p, state)
        self.index[name] = {"sha256": digest, "seq": self._next_seq() if seq is None else seq,
                            "step": int(state.get("step", 0)), "epoch": int(state.get("epoch", 0)),
                            "batch": int(state.get("batch", 0)), "time": time.time()}
        self._prune()
        self._write_index()
        return p

    def copy(self, src: str, dst: str) -> None:
        """Copy a checkpoint byte for byte (e.g. last.pt -> best.pt), keeping its seq."""
        data = (self.root / src).read_bytes()
        with atomic_open(self.root / dst, "wb") as f:
            f.write(data)
        self.index[dst] = dict(self.index[src])
        self._write_index()

    def _prune(self) -> None:
        for pattern, keep in ((_STEP_RE, self.keep_last), (_PREVAL_RE, self.keep_preval)):
            names = sorted((n for n in self.index if pattern.match(n)), key=lambda n: int(pattern.match(n)[1]))
            for n in names[:-keep] if keep > 0 else names:
                (self.root / n).unlink(missing_ok=True)
                del self.index[n]

    def preval_files(self) -> list[str]:
        """Pre-validation epoch checkpoints, oldest first."""
        return sorted((n for n in self.index if _PREVAL_RE.match(n)), key=lambda n: int(_PREVAL_RE.match(n)[1]))

    def verify(self, name: str) -> bool:
        p = self.root / name
        entry = self.index.get(name)
        if not p.exists() or entry is None:
            return False
        return sha256_file(p) == entry["sha256"]

    def load(self, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """Load one named checkpoint after checking its sha256 (VecragError when it does not match)."""
        p = self.root / name
        if name in self.index and p.exists() and not self.verify(name):
            raise VecragError("checkpoint checksum mismatch (truncated or corrupt file)", path=p,
                              hint="use another checkpoint of this run (e.g. --checkpoint last)")
        if name not in self.index and p.exists():
            log.warning("%s is not in %s; loading it unverified", p, INDEX)
        return load_file(p, map_location)

    def candidates(self) -> list[str]:
        """Indexed files, newest state first (by write sequence, then step)."""
        return sorted(self.index, key=lambda n: (self.index[n].get("seq", 0), self.index[n].get("step", 0)),
                      reverse=True)

    def rebuild_index(self) -> list[str]:
        """Index every ``*.pt`` file of the directory that loads (weights_only), newest state last; rewrite
        index.json when any does. Returns the indexed names (oldest first)."""
        found: list[tuple[tuple, str, dict[str, Any]]] = []
        for p in sorted(self.root.glob("*.pt")):
            try:
                state = load_file(p)
            except VecragError as e:
                log.warning("checkpoint %s cannot be loaded (%s); left out of the rebuilt index", p, e)
                continue
            entry = {"sha256": sha256_file(p), "step": int(state.get("step", 0)),
                     "epoch": int(state.get("epoch", 0)), "batch": int(state.get("batch", 0)),
                     "time": p.stat().st_mtime}
            found.append((state_order(p.name, state), p.name, entry))
            del state
        found.sort(key=lambda f: f[0])
        for seq, (_, name, entry) in enumerate(found, start=1):
            self.index[name] = {**entry, "seq": seq}
        names = [name for _, name, _ in found]
        if names:
            index = self.root / INDEX
            log.warning("%s was %s: rebuilt it from the %d checkpoint(s) that load (%s)", index,
                        self.index_problem, len(names), ", ".join(names))
            if index.exists():  # keep the damaged file for inspection
                atomic_write_bytes(index.with_name(INDEX + ".damaged"), index.read_bytes())
            self._write_index()
        return names

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[str, dict[str, Any]] | None:
        """The newest checkpoint that verifies and loads; warn and fall back past damaged ones. A missing or
        damaged index.json is first rebuilt from the checkpoints that load (:meth:`rebuild_index`)."""
        if self.index_problem is not None and any(self.root.glob("*.pt")):
            self.rebuilt_reason = self.index_problem
            self.rebuilt = self.rebuild_index()
        for name in self.candidates():
            p = self.root / name
            if not p.exists():
                log.warning("checkpoint %s is missing; falling back to an older one", p)
                continue
            if not self.verify(name):
                log.warning("checkpoint %s fails its sha256 check (truncated or corrupt); falling back to an "
                            "older one", p)
                continue
            try:
                return name, load_file(p, map_location)
            except VecragError as e:
                log.warning("checkpoint %s cannot be loaded (%s); falling back to an older one", p, e)
        return None
