"""Decoding views of a run for the dashboard and `vecrag report`: the decision mix (calibration, decode eval,
rollouts, telemetry), the distribution of c and the rollouts, read from the run's decode telemetry,
``metrics/decode_eval-*.json``, ``metrics/generate_eval-*.json`` and ``calibration.json`` through the same
stay-inside-the-run checks as :mod:`vecrag.serve.runs`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vecrag.fsutil import read_jsonl
from vecrag.runs.layout import CALIBRATION, LOG, METRICS
from vecrag.serve.runs import DECISIONS, FILE_RE, MAX_JSON_BYTES, RunInfo, _inside, _num


def _hist(values: list[float], bins: int = 30) -> dict[str, Any]:
    """Histogram over the range of the values (cosines: within [-1, 1])."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    pad = max(0.01, 0.02 * (hi - lo))
    lo, hi = max(-1.0, lo - pad), min(1.0, hi + pad)
    if hi <= lo:
        lo, hi = lo - 0.01, hi + 0.01
    edges = [lo + i * (hi - lo) / bins for i in range(bins + 1)]
    return {"edges": edges, "counts": _bin(vals, edges), "n": len(vals)}


def _decision(rec: dict[str, Any]) -> str | None:
    d = rec.get("decision", rec.get("path", rec.get("mode")))
    return d.upper() if isinstance(d, str) and d.upper() in DECISIONS else None


def _decode_files(run: RunInfo) -> dict[str, list[Path]]:
    """The files the decoding views read, by kind: ``telemetry`` (``*.jsonl`` other than log.jsonl, in the run
    directory or metrics/), ``json`` (metrics/*.json), ``calibration`` (the run's calibration.json). Each name
    plain, each file inside the run's base (a link leading out is skipped)."""
    def ok(p: Path) -> bool:
        return FILE_RE.match(p.name) is not None and p.is_file() and _inside(p, run.base)

    mdir = run.path / METRICS
    dirs = [d for d in (run.path, mdir) if d.is_dir() and _inside(d, run.base)]
    return {"telemetry": [p for d in dirs for p in sorted(d.glob("*.jsonl")) if p.name != LOG and ok(p)],
            "json": [p for p in sorted(mdir.glob("*.json")) if ok(p)] if mdir in dirs else [],
            "calibration": [p for p in [run.path / CALIBRATION] if ok(p)]}


def has_decode(run: RunInfo) -> bool:
    f = _decode_files(run)
    return bool(f["telemetry"] or f["calibration"] or any(
        p.name.startswith(("decode_eval-", "generate_eval-")) for p in f["json"]))


def _load_json(p: Path) -> Any:
    try:
        if p.stat().st_size > MAX_JSON_BYTES:
            return None
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _mix_row(group: str, row: str, counts: dict[str, float]) -> dict[str, Any] | None:
    n = sum(counts.values())
    if n <= 0:
        return None
    return {"group": group, "row": row, "n": round(n, 3), **{k: 100.0 * counts.get(k, 0.0) / n for k in DECISIONS}}


def _lane_counts(d: dict[str, Any]) -> dict[str, float]:
    """{SNAP, BLEND, NOVEL} counts of one by-lane entry: counts as they are, or fractions (pct_*) times n."""
    n = _num(d.get("n"))
    out = dict.fromkeys(DECISIONS, 0.0)
    for k in DECISIONS:
        if _num(d.get(k)) is not None:  # counts
            out[k] += float(d[k])
        elif _num(d.get(f"pct_{k}")) is not None:  # vecrag eval decode: fractions of n samples
            out[k] += float(d[f"pct_{k}"]) * (n if n is not None else 1.0)
    return out


def _rollouts(obj: Any, source: str) -> dict[str, Any] | None:
    """A `vecrag eval generate` report (``rows``: generator -> coverage, cos_by_step, ... with 95 % intervals)."""
    rows = obj.get("rows") if isinstance(obj, dict) else None
    if not isinstance(rows, dict) or not rows:
        return None
    out = []
    for name, r in rows.items():
        if not isinstance(r, dict) or _num(r.get("coverage")) is None:
            continue
        dec = r.get("decisions") if isinstance(r.get("decisions"), dict) else {}
        ci = r.get("coverage_ci")
        cos = [_num(v) for v in (r.get("cos_by_step") or []) if isinstance(r.get("cos_by_step"), list)]
        out.append({"name": str(name), "coverage": _num(r.get("coverage")),
                    "coverage_ci": [_num(v) for v in ci] if isinstance(ci, list) and len(ci) == 2 else None,
                    "cos_by_step": cos, **{k: _num(r.get(k)) for k in ("cos", "hit", "forward", "repeat", "echo")},
                    "decisions": {str(k): v for k, v in dec.items() if _num(v) is not None},
                    # the truth itself: coverage and cosine 1 by definition, a ceiling rather than a generator
                    "reference": "TRUE" in dec or str(name).startswith("true ")})
    if not out:
        return None
    return {"source": source, "split": obj.get("split"), "P": _num(obj.get("P")), "S": _num(obj.get("S")),
            "n_articles": _num(obj.get("n_articles")), "rows": out}


def decode_views(run: RunInfo) -> dict[str, Any]:
    """%SNAP/%BLEND/%NOVEL per lane and the distribution of c, from decode telemetry or eval JSON.

    Telemetry (``vecrag generate --telemetry``): any ``*.jsonl`` in the run directory or ``metrics/`` (other
    than log.jsonl) whose records carry ``decision`` (SNAP/BLEND/NOVEL), ``c`` and optionally ``lane``.
    Eval JSON (``vecrag eval decode``: ``decode_eval-*.json``), used when there is no telemetry: a
    ``metrics/*.json`` with ``by_lane`` mapping lane -> {n, pct_SNAP, pct_BLEND, pct_NOVEL} (fractions) or
    -> {SNAP, BLEND, NOVEL} (counts), optionally ``c_hist`` ({edges, counts}) or ``c_values``.
    ``by_lane``, ``counts``, ``c_hist`` and ``sources`` keep that rule (telemetry first; `vecrag report`).

    The dashboard's views use every source at once:
    - ``mix``: rows {group, row, n, SNAP, BLEND, NOVEL (%)}: the VAL shares per profile of calibration.json,
      each decode eval JSON (all lanes, then per lane), the decoder rows of a generate eval JSON (``vecrag eval
      generate``: decisions of the rollouts), the telemetry (all, then per lane when there are several);
    - ``c_dist``: {edges, series: [{label, n, counts}]}: c of the telemetry's steps and of the calibration's VAL
      samples (``samples.c``) on shared bins;
    - ``rollouts``: the newest generate eval JSON (coverage per generator with its 95 % interval, cosine to the
      truth by step), or None;
    - ``files``: every file these views came from.
    """
    files = _decode_files(run)
    by_lane: dict[str, dict[str, float]] = {}
    cs: list[float] = []
    sources: list[str] = []
    c_hist: dict[str, Any] | None = None
    mix_eval: list[dict[str, Any]] = []
    mix_roll: list[dict[str, Any]] = []
    mix_tele: list[dict[str, Any]] = []
    mix_cal: list[dict[str, Any]] = []
    used: list[str] = []
    for p in files["telemetry"]:
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
            sources.append(p.relative_to(run.path).as_posix())
    tele_lanes = {k: dict(v) for k, v in by_lane.items()}
    tele_cs = list(cs)
    rollouts: dict[str, Any] | None = None
    rollout_mtime = -1.0
    for p in files["json"]:
        obj = _load_json(p)
        if obj is None:
            continue
        name = f"{METRICS}/{p.name}"
        ro = _rollouts(obj, name)
        if ro is not None:
            used.append(name)
            for r in ro["rows"]:
                if r["name"].startswith("decoder:") and set(r["decisions"]) <= set(DECISIONS):
                    group = "rollouts" + (f" {ro['split']}" if isinstance(ro["split"], str) else "")
                    row = _mix_row(group, r["name"].split(":", 1)[1],
                                   {k: float(v) * (ro["n_articles"] or 1) * (ro["S"] or 1)
                                    for k, v in r["decisions"].items()})
                    if row:
                        mix_roll.append(row)
            if p.stat().st_mtime > rollout_mtime:
                rollouts, rollout_mtime = ro, p.stat().st_mtime
            continue
        found = _find_decode(obj)
        if found is None:
            continue
        lanes, hist, values = found
        used.append(name)
        prof = obj.get("profile") if isinstance(obj, dict) else None
        group = "eval decode" + "".join(f" {v}" for v in (obj.get("split"), prof) if isinstance(v, str))
        overall = obj.get("overall") if isinstance(obj.get("overall"), dict) else None
        total = dict.fromkeys(DECISIONS, 0.0)
        lane_rows = []
        for lane, d in lanes.items():
            counts = _lane_counts(d)
            for k in DECISIONS:
                total[k] += counts[k]
            if (row := _mix_row(group, str(lane or "(none)"), counts)) is not None:
                lane_rows.append(row)
            if not tele_lanes:  # `vecrag report`'s rule: telemetry first, else every eval JSON
                acc = by_lane.setdefault(str(lane or "(none)"), dict.fromkeys(DECISIONS, 0.0))
                for k in DECISIONS:
                    acc[k] += counts[k]
        if (row := _mix_row(group, "all lanes", _lane_counts(overall) if overall else total)) is not None:
            mix_eval.append(row)
        mix_eval.extend(sorted(lane_rows, key=lambda r: -r["n"]) if len(lane_rows) > 1 else [])
        if not tele_lanes:
            cs.extend(values)
            c_hist = c_hist or hist
            sources.append(name)
    if tele_lanes:
        tot = {k: sum(v[k] for v in tele_lanes.values()) for k in DECISIONS}
        rows = [_mix_row("generate", "all lanes", tot)]
        if len(tele_lanes) > 1:
            rows += sorted((_mix_row("generate", lane, v) for lane, v in tele_lanes.items()),
                           key=lambda r: -(r["n"] if r else 0))
        mix_tele.extend(r for r in rows if r)
        used.extend(sources)
    cal_cs: list[float] = []
    cal_split = "val"
    for p in files["calibration"]:
        obj = _load_json(p)
        if not isinstance(obj, dict):
            continue
        samples = obj.get("samples") if isinstance(obj.get("samples"), dict) else {}
        cal_cs = [v for x in (samples.get("c") or []) if (v := _num(x)) is not None]
        n_val = _num(obj.get("n_samples")) or float(len(cal_cs)) or 1.0
        cal_split = str(obj.get("split") or "val")
        profiles = obj.get("profiles") if isinstance(obj.get("profiles"), dict) else {}
        for name, prof in profiles.items():
            if not isinstance(prof, dict):
                continue
            snap, novel = _num(prof.get("val_snap_share")), _num(prof.get("val_novel_share"))
            if snap is None or novel is None:
                continue
            row = _mix_row(f"calibrate {cal_split}", str(name),
                           {"SNAP": snap * n_val, "NOVEL": novel * n_val,
                            "BLEND": max(0.0, 1.0 - snap - novel) * n_val})
            if row:
                mix_cal.append(row)
        used.append(p.name)
    dists = [(label, vals) for label, vals in ((f"generate ({len(tele_cs)} steps)", tele_cs),
                                               (f"calibrate {cal_split} ({len(cal_cs)} samples)", cal_cs)) if vals]
    c_dist = None
    if dists:
        edges = _hist([c for _, vals in dists for c in vals])["edges"]
        c_dist = {"edges": edges, "series": [{"label": label, "n": len(vals), "counts": _bin(vals, edges)}
                                             for label, vals in dists]}
    pct = {lane: {k: (100.0 * v / s if (s := sum(row.values())) else 0.0) for k, v in row.items()}
           for lane, row in sorted(by_lane.items())}
    return {"by_lane": pct, "counts": by_lane, "c_hist": _hist(cs) if cs else c_hist, "sources": sources,
            "mix": mix_cal + mix_eval + mix_roll + mix_tele, "c_dist": c_dist, "rollouts": rollouts,
            "files": list(dict.fromkeys(used))}


def _bin(values: list[float], edges: list[float]) -> list[int]:
    bins = len(edges) - 1
    width = (edges[-1] - edges[0]) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int((v - edges[0]) / width)))] += 1
    return counts


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
