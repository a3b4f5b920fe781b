"""Run directories for the dashboard and `vecrag report`: safe lookup, log parsing, chart series.

Pure Python (no FastAPI), shared by :mod:`vecrag.serve.app` and :mod:`vecrag.report`.

Security model (the dashboard reads files named in requests):
- a run is addressed by a *name*, never by a path; names match ``NAME_RE`` (one or two segments of
  ``[A-Za-z0-9_][A-Za-z0-9_.-]*``, so no ``..``, no leading ``/``, no hidden entries);
- the name must be one of the runs that :meth:`RunRegistry.list` discovers by scanning the runs root
  (so the request never builds a path the server did not find itself);
- every file is opened through :meth:`RunRegistry.file`, which resolves symlinks and checks that the
  result stays under the resolved runs root (or under the explicitly configured run directory).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vecrag.fsutil import read_jsonl

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?$")
FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
LOG = "log.jsonl"
METRICS = "metrics"
# keys of train records that are bookkeeping, not series
TRAIN_BOOK = {"kind", "step", "epoch", "time", "t", "wall", "batch", "micro", "elapsed_s"}
TRAIN_CORE = ("loss", "lr", "samples_per_s", "rss_mb", "cuda_mem_mb")
VAL_BOOK = {"best", "best_epoch", "val_s", "improved", "n_queries"}
DECISIONS = ("SNAP", "BLEND", "NOVEL")
MAX_LOG_BYTES = 256 * 2**20


class RunNotFound(LookupError):
    """The name is invalid, unknown, or resolves outside the allowed directories (all look the same)."""


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    base: Path  # resolved directory the run must stay under

    def summary(self) -> dict[str, Any]:
        """What the run list shows. A log.jsonl or metrics/ that is a link leading outside the run's base is
        treated as absent: not even its size or time is reported (they would describe a file the server may not
        show)."""
        log = self.path / LOG
        mdir = self.path / METRICS
        has_log = log.is_file() and _inside(log, self.base)
        has_mdir = mdir.is_dir() and _inside(mdir, self.base)
        return {
            "name": self.name,
            "has_log": has_log,
            "log_bytes": log.stat().st_size if has_log else 0,
            "modified": max((p.stat().st_mtime for p, ok in ((log, has_log), (mdir, has_mdir)) if ok), default=0.0),
            "metrics": sorted(p.name for p in mdir.glob("*.json") if FILE_RE.match(p.name)
                              and _inside(p, self.base)) if has_mdir else [],
        }


def _is_run(p: Path) -> bool:
    return (p / LOG).is_file() or (p / METRICS).is_dir()


def _inside(p: Path, base: Path) -> bool:
    try:
        return p.resolve().is_relative_to(base)
    except (OSError, RuntimeError):
        return False


class RunRegistry:
    """Runs found under ``root`` (depth 1 or 2) plus explicitly configured run directories."""

    def __init__(self, root: str | Path | None = None, extra: dict[str, str | Path] | None = None):
        self.root = Path(root).resolve() if root is not None else None
        self.extra = {k: Path(v).resolve() for k, v in (extra or {}).items() if NAME_RE.match(k)}

    def list(self) -> dict[str, RunInfo]:
        runs: dict[str, RunInfo] = {}
        if self.root is not None and self.root.is_dir():
            if _is_run(self.root):
                runs[self.root.name] = RunInfo(self.root.name, self.root, self.root)
            for child in sorted(self.root.iterdir()):
                if not FILE_RE.match(child.name) or not child.is_dir() or not _inside(child, self.root):
                    continue
                if _is_run(child):
                    runs[child.name] = RunInfo(child.name, child.resolve(), self.root)
                    continue
                for sub in sorted(child.iterdir()):
                    if FILE_RE.match(sub.name) and sub.is_dir() and _inside(sub, self.root) and _is_run(sub):
                        name = f"{child.name}/{sub.name}"
                        runs[name] = RunInfo(name, sub.resolve(), self.root)
        for name, path in self.extra.items():
            if name not in runs and path.is_dir():
                runs[name] = RunInfo(name, path, path)
        return runs

    def get(self, name: str) -> RunInfo:
        if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
            raise RunNotFound(name)
        run = self.list().get(name)
        if run is None or not _inside(run.path, run.base):
            raise RunNotFound(name)
        return run

    @staticmethod
    def file(run: RunInfo, *parts: str) -> Path:
        """A file of the run by relative parts (each a plain name), resolved and checked to stay inside."""
        for part in parts:
            if not FILE_RE.match(part):
                raise RunNotFound(part)
        p = run.path.joinpath(*parts)
        if not _inside(p, run.base) or not p.resolve().is_file():
            raise RunNotFound("/".join(parts))
        return p.resolve()


# ---- parsing ----------------------------------------------------------------------------------------

def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def read_log(path: Path, max_train_points: int = 5000) -> list[dict[str, Any]]:
    """log.jsonl records; train records thinned evenly to ``max_train_points`` (first and last kept)."""
    if path.stat().st_size > MAX_LOG_BYTES:
        raise ValueError(f"{path.name} is larger than {MAX_LOG_BYTES >> 20} MiB")
    recs = [r for r in read_jsonl(path) if isinstance(r, dict)]
    train_idx = [i for i, r in enumerate(recs) if r.get("kind") == "train"]
    if len(train_idx) > max_train_points > 1:
        stride = (len(train_idx) - 1) / (max_train_points - 1)
        keep = {train_idx[round(j * stride)] for j in range(max_train_points)}
        recs = [r for i, r in enumerate(recs) if r.get("kind") != "train" or i in keep]
    return [_finite(r) for r in recs]


def _finite(r: dict[str, Any]) -> dict[str, Any]:
    """JSON cannot carry NaN/inf to a browser: replace them with None (recursively for lists/dicts)."""
    out: dict[str, Any] = {}
    for k, v in r.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        elif isinstance(v, dict):
            out[k] = _finite(v)
        elif isinstance(v, list):
            out[k] = [None if isinstance(x, float) and not math.isfinite(x) else x for x in v]
        else:
            out[k] = v
    return out


def _series(recs: list[dict[str, Any]], xkey: str, keys: list[str]) -> dict[str, list[list[float]]]:
    out: dict[str, list[list[float]]] = {}
    for k in keys:
        pts = [[_num(r.get(xkey)), _num(r.get(k))] for r in recs]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if pts:
            out[k] = pts  # type: ignore[assignment]
    return out


def is_recall_key(k: str) -> bool:
    """R@k / Hit@k / recall@k, also with a prefix such as ``baseline_`` (not MRR@k, not the ``_ci`` pairs)."""
    return re.search(r"(^|_)(R|Hit|recall)@\d+$", k) is not None


def _is_miner_key(k: str) -> bool:
    return k.startswith("mining") or any(w in k for w in ("mined", "miner", "neg", "removed", "fallback"))


def training_views(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Chart-ready series: {group: {series: [[x, y], ...]}} for the training and validation views."""
    train = [r for r in recs if r.get("kind") == "train"]
    val = [r for r in recs if r.get("kind") == "val"]
    mining = [r for r in recs if r.get("kind") == "mining"]
    extra_keys = sorted({k for r in train for k, v in r.items()
                         if k not in TRAIN_BOOK and k not in TRAIN_CORE and _num(v) is not None})
    mine_keys = sorted({k for r in mining for k, v in r.items() if k not in TRAIN_BOOK and _num(v) is not None})
    val_keys = sorted({k for r in val for k, v in r.items()
                       if k not in TRAIN_BOOK and k not in VAL_BOOK and _num(v) is not None})
    metric_keys = [k for k in val_keys if not k.startswith("baseline_")]
    base_keys = [k for k in val_keys if k.startswith("baseline_")]
    xval = "epoch" if any(_num(r.get("epoch")) is not None for r in val) else "step"
    mine_like = [k for k in extra_keys if _is_miner_key(k)]
    miner = _series(train, "step", mine_like)
    miner.update({f"mining.{k}": v for k, v in _series(mining, "step", mine_keys).items()})
    task = _series(train, "step", [k for k in extra_keys if k not in mine_like])
    return {
        "loss": _series(train, "step", ["loss"]),
        "lr": _series(train, "step", ["lr"]),
        "throughput": _series(train, "step", ["samples_per_s"]),
        "memory": _series(train, "step", ["rss_mb", "cuda_mem_mb"]),
        "miner": miner,
        "task": task,
        "val_x": xval,
        "recall": _series(val, xval, [k for k in metric_keys if is_recall_key(k)]),
        "recall_baselines": _series(val, xval, [k for k in base_keys if is_recall_key(k)]),
        "val_other": _series(val, xval, [k for k in metric_keys if not is_recall_key(k)]),
        "val_other_baselines": _series(val, xval, [k for k in base_keys if not is_recall_key(k)]),
        "events": [r for r in recs if r.get("kind") == "event"][-200:],
        "counts": {"train": len(train), "val": len(val), "mining": len(mining)},
    }


# ---- decoding views ----------------------------------------------------------------------------------

def _hist(values: list[float], bins: int = 30) -> dict[str, Any]:
    """Histogram over the range of the values (cosines: within [-1, 1])."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    pad = max(0.01, 0.02 * (hi - lo))
    lo, hi = max(-1.0, lo - pad), min(1.0, hi + pad)
    if hi <= lo:
        lo, hi = lo - 0.01, hi + 0.01
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in vals:
        counts[min(bins - 1, max(0, int((v - lo) / width)))] += 1
    return {"edges": [lo + i * width for i in range(bins + 1)], "counts": counts, "n": len(vals)}


def _decision(rec: dict[str, Any]) -> str | None:
    d = rec.get("decision", rec.get("path", rec.get("mode")))
    return d.upper() if isinstance(d, str) and d.upper() in DECISIONS else None


def decode_views(run: RunInfo) -> dict[str, Any]:
    """%SNAP/%BLEND/%NOVEL per lane and the distribution of c, from decode telemetry or eval JSON.

    Telemetry (``vecrag generate --telemetry``): any ``*.jsonl`` in the run directory or ``metrics/`` (other
    than log.jsonl) whose records carry ``decision`` (SNAP/BLEND/NOVEL), ``c`` and optionally ``lane``.
    Eval JSON (``vecrag eval decode``: ``decode_eval-*.json``), used when there is no telemetry: a
    ``metrics/*.json`` with ``by_lane`` mapping lane -> {n, pct_SNAP, pct_BLEND, pct_NOVEL} (fractions) or
    -> {SNAP, BLEND, NOVEL} (counts), optionally ``c_hist`` ({edges, counts}) or ``c_values``.
    """
    by_lane: dict[str, dict[str, float]] = {}
    cs: list[float] = []
    sources: list[str] = []
    c_hist: dict[str, Any] | None = None
    files = [p for d in (run.path, run.path / METRICS) if d.is_dir() for p in sorted(d.glob("*.jsonl"))
             if p.name != LOG and FILE_RE.match(p.name) and _inside(p, run.base)]
    for p in files:
        n0 = len(cs) + sum(sum(v.values()) for v in by_lane.values())
        for r in read_jsonl(p):
            dec = _decision(r) if isinstance(r, dict) else None
            if dec is None:
                continue
            lane = str(r.get("lane") or "(none)")
            by_lane.setdefault(lane, dict.fromkeys(DECISIONS, 0.0))[dec] += 1
            c = _num(r.get("c"))
            if c is not None:
                cs.append(c)
        if len(cs) + sum(sum(v.values()) for v in by_lane.values()) > n0:
            sources.append(p.name)
    if not by_lane and (run.path / METRICS).is_dir():
        for p in sorted((run.path / METRICS).glob("*.json")):
            if not FILE_RE.match(p.name) or not _inside(p, run.base):
                continue
            try:
                obj = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            found = _find_decode(obj)
            if found is None:
                continue
            lanes, hist, values = found
            for lane, d in lanes.items():
                row = by_lane.setdefault(str(lane or "(none)"), dict.fromkeys(DECISIONS, 0.0))
                n = _num(d.get("n"))
                for k in DECISIONS:
                    if _num(d.get(k)) is not None:  # counts
                        row[k] += float(d[k])
                    elif _num(d.get(f"pct_{k}")) is not None:  # vecrag eval decode: fractions of n samples
                        row[k] += float(d[f"pct_{k}"]) * (n if n is not None else 1.0)
            cs.extend(values)
            c_hist = c_hist or hist
            sources.append(f"{METRICS}/{p.name}")
    pct = {lane: {k: (100.0 * v / s if (s := sum(row.values())) else 0.0) for k, v in row.items()}
           for lane, row in sorted(by_lane.items())}
    return {"by_lane": pct, "counts": by_lane, "c_hist": _hist(cs) if cs else c_hist, "sources": sources}


def _find_decode(obj: Any, depth: int = 0) -> tuple[dict, dict | None, list[float]] | None:
    """Search a decode-eval JSON for a by-lane decision table (a few levels deep)."""
    if not isinstance(obj, dict) or depth > 3:
        return None
    lanes = obj.get("by_lane") or obj.get("per_lane") or obj.get("lanes")
    if isinstance(lanes, dict) and lanes and all(isinstance(v, dict) for v in lanes.values()) and any(
            any(k in v or f"pct_{k}" in v for k in DECISIONS) for v in lanes.values()):
        hist = obj.get("c_hist") if isinstance(obj.get("c_hist"), dict) else None
        values = [x for x in (obj.get("c_values") or []) if _num(x) is not None]
        return lanes, hist, values
    for v in obj.values():
        found = _find_decode(v, depth + 1)
        if found is not None:
            return found
    return None
