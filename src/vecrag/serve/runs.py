"""Run directories for the dashboard and `vecrag report`: safe lookup, log parsing, chart series.

Pure Python (no FastAPI), shared by :mod:`vecrag.serve.app` and :mod:`vecrag.serve.report`.

Security model (the dashboard reads files named in requests):
- a run is addressed by a *name*, never by a path; names match ``NAME_RE`` (one or two segments of
  ``[A-Za-z0-9_][A-Za-z0-9_.-]*``, so no ``..``, no leading ``/``, no hidden entries);
- the name must be one of the runs that :meth:`RunRegistry.list` discovers by scanning the runs root
  (so the request never builds a path the server did not find itself);
- every file is opened through :meth:`RunRegistry.file`, which resolves symlinks and checks that the
  result stays under the resolved runs root (or under the explicitly configured run directory).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vecrag.fsutil import read_jsonl
from vecrag.runs.layout import LOG, METRICS

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}(/[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127})?$")
FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
# keys of train records that are bookkeeping, not series
TRAIN_BOOK = {"kind", "step", "epoch", "time", "t", "wall", "batch", "micro", "elapsed_s"}
TRAIN_CORE = ("loss", "lr", "samples_per_s", "rss_mb", "cuda_mem_mb")
VAL_BOOK = {"best", "best_epoch", "val_s", "improved", "n_queries"}
DECISIONS = ("SNAP", "BLEND", "NOVEL")
MAX_LOG_BYTES = 256 * 2**20
MAX_JSON_BYTES = 32 * 2**20


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


# Counters: bookkeeping sizes that grow or stay put (samples seen, queue length, number of validation samples).
# The dashboard hides them by default (one legend click shows them): beside losses and cosines they only flatten.
COUNTER_RE = re.compile(r"^(samples|samples_seen|n_val|n_train|n_queries|n_bank|queue_len|steps?|total_steps|"
                        r"epoch|params)$|^n_|_len$|_seen$|_count$|^count_")
# cumulative counters of the retriever's miners (one increment per micro-batch): drawn as % of the batches of each
# logging interval instead (the raw totals only climb, and dwarf every other miner series)
MINER_RATES = {"mining_mined_sync": "mined sync %", "mining_mined_async": "mined async %",
               "mining_fallback_inbatch": "in-batch fallback %", "mining_mined_sync_graph": "sync via CUDA graph %",
               "miner_hits": "async hits %", "miner_stale": "async stale %", "miner_misses": "async misses %",
               "miner_fallbacks": "async fallbacks %", "miner_errors": "async errors %",
               "miner_jobs": "async jobs %", "miner_graph_jobs": "async graph jobs %"}
MINER_RATE_ORDER = list(MINER_RATES.values())
# mining-round records (one per epoch): what a reader looks at first
ROUND_ORDER = ("pos_mean", "neg_mean", "pct_short", "pct_removed_rel", "pct_removed_mask", "pct_removed_band",
               "pct_removed_dup", "pos_std", "neg_std")


def series_unit(key: str) -> str:
    """The unit a series is drawn in (series of one unit may share a y axis; the dashboard never puts two units
    on one axis). A heuristic on the name; unknown names are their own unit."""
    k = key.lower()
    if COUNTER_RE.search(k):
        return "count"
    if k.endswith("%") or k.startswith("pct_") or k.endswith("_pct"):
        return "%"
    if k.endswith("_ms"):
        return "ms"
    if k.endswith("_mb"):  # host RSS and CUDA memory are different pools: an axis each
        return "CUDA MB" if "cuda" in k else "MB"
    if k == "samples_per_s":
        return "samples/s"
    if k == "lr":
        return "lr"
    if k.startswith("loss"):
        return "loss"
    if "grad_norm" in k:
        return "grad norm"
    if k.startswith("masked_") or re.search(r"(^|_)(depth|jobs|restarts|errors|disabled)$", k):
        return "count"
    if k == "median_rank" or k.endswith("rank"):
        return "rank"
    if re.search(r"(^|_)(acc|cos|mean|std|precision|share|frac|rate|coverage)$|@\d+$", k):
        return "fraction"
    return key


def series_meta(*groups: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{series: {unit, counter}} for every series of the groups (what the dashboard needs to pick axes)."""
    return {k: {"unit": series_unit(k), "counter": COUNTER_RE.search(k.lower()) is not None}
            for g in groups for k in g}


def _micro_per_step(recs: list[dict[str, Any]]) -> float:
    """Micro-batches per optimizer step (gradient accumulation), from the trainer's start event (else 1)."""
    for r in recs:
        if r.get("kind") == "event" and r.get("event") == "start":
            nb, spe = _num(r.get("n_batches")), _num(r.get("steps_per_epoch"))
            if nb and spe:
                return max(1.0, math.ceil(nb / spe))
    return 1.0


def _miner_series(train: list[dict[str, Any]], keys: list[str], micro: float) -> dict[str, list[list[float]]]:
    """Per-step miner series: the cumulative counters as % of the micro-batches of each logging interval
    (an interval where the step goes back, a resume, starts afresh), every other numeric key as it is."""
    out: dict[str, list[list[float]]] = {}
    for k in keys:
        if k in MINER_RATES:
            pts: list[list[float]] = []
            prev = (0.0, 0.0)  # (step, total): the counters start at 0 at step 0
            for r in train:
                x, v = _num(r.get("step")), _num(r.get(k))
                if x is None or v is None:
                    continue
                if x > prev[0] and v >= prev[1]:
                    pts.append([x, 100.0 * (v - prev[1]) / ((x - prev[0]) * micro)])
                prev = (x, v)
            if pts:
                out[MINER_RATES[k]] = pts
        else:
            out.update(_series(train, "step", [k]))
    order = {name: i for i, name in enumerate(MINER_RATE_ORDER)}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _val_panels(val: list[dict[str, Any]], xval: str, metric_keys: list[str],
                base_keys: list[str]) -> list[dict[str, Any]]:
    """One small panel per validation metric: the model's series and the baselines of that metric (a baseline
    key is ``baseline_[FAMILY_]METRIC``), each panel on its own axis. Counters (n_val) get no panel. Recall-like
    fractions are shown in %. The metric the trainer selects checkpoints by (equal to ``best`` where the run
    improved) comes first."""
    metrics = [k for k in metric_keys if not COUNTER_RE.search(k.lower())]
    by_metric: dict[str, dict[str, list[list[float]]]] = {m: {} for m in metrics}
    for b in base_keys:
        rest = b[len("baseline_"):]
        owner = max((m for m in metrics if rest == m or rest.endswith("_" + m)), key=len, default=None)
        if owner is not None:
            fam = rest[: -len(owner)].rstrip("_")
            by_metric[owner].update({("baseline " + fam).strip(): p for p in _series(val, xval, [b]).values()})
    head = None
    for r in reversed(val):
        if r.get("improved") and _num(r.get("best")) is not None:
            head = next((m for m in metrics if _num(r.get(m)) == _num(r.get("best"))), None)
            break

    def order(m: str) -> tuple[int, int, str]:
        kk = re.search(r"@(\d+)$", m)
        return (0 if m == head else 1 if is_recall_key(m) else 2 if "@" in m else 3,
                int(kk.group(1)) if kk else 0, m)

    panels = []
    for m in sorted(metrics, key=order):
        series = _series(val, xval, [m])
        if not series:
            continue
        pts = series[m]
        frac = is_recall_key(m) and all(0.0 <= p[1] <= 1.0 for g in (pts, *by_metric[m].values()) for p in g)
        panels.append({"metric": m, "unit": "%" if frac else series_unit(m), "scale": 100.0 if frac else 1.0,
                       "series": pts, "baselines": by_metric[m], "selects_checkpoint": m == head})
    return panels


def training_views(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Chart-ready series: {group: {series: [[x, y], ...]}} for the training and validation views, with
    ``meta`` (unit and counter flag of every series) and ``val_panels`` (one per validation metric)."""
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
    miner = _miner_series(train, mine_like, _micro_per_step(recs))
    # a round record repeats the cumulative counters the train records carry (and queue_len): not plotted again
    round_keys = [k for k in mine_keys if not k.startswith(("mining_", "miner_")) and k != "queue_len"]
    rank = {k: i for i, k in enumerate(ROUND_ORDER)}
    rounds = _series(mining, "step", sorted(round_keys, key=lambda k: (rank.get(k, len(rank)), k)))
    task_keys = [k for k in extra_keys if k not in mine_like]
    # what a reader looks at first: accuracies and cosines, then the task's losses, then the rest
    task_keys.sort(key=lambda k: (0 if series_unit(k) == "fraction" else 1 if k.startswith("loss") else
                                  3 if COUNTER_RE.search(k) else 2, k))
    task = _series(train, "step", task_keys)
    views = {
        "loss": _series(train, "step", ["loss"]),
        "lr": _series(train, "step", ["lr"]),
        "throughput": _series(train, "step", ["samples_per_s"]),
        "memory": _series(train, "step", ["rss_mb", "cuda_mem_mb"]),
        "miner": miner,
        "mining_rounds": rounds,
        "task": task,
        "val_x": xval,
        "recall": _series(val, xval, [k for k in metric_keys if is_recall_key(k)]),
        "recall_baselines": _series(val, xval, [k for k in base_keys if is_recall_key(k)]),
        "val_other": _series(val, xval, [k for k in metric_keys if not is_recall_key(k)]),
        "val_other_baselines": _series(val, xval, [k for k in base_keys if not is_recall_key(k)]),
        "val_panels": _val_panels(val, xval, metric_keys, base_keys),
        "val_n": next((int(v) for r in reversed(val) for k in ("n_queries", "n_val")
                       if (v := _num(r.get(k))) is not None), None),
        "events": [r for r in recs if r.get("kind") == "event"][-200:],
        "counts": {"train": len(train), "val": len(val), "mining": len(mining)},
    }
    views["meta"] = series_meta(*(views[g] for g in ("loss", "lr", "throughput", "memory", "miner",
                                                     "mining_rounds", "task")))
    return views
