"""`vecrag report RUN`: a self-contained HTML page with PNG plots of a run's training, validation and
decoding views (the same series as the dashboard, from :mod:`vecrag.serve.runs`), drawn with matplotlib (Agg).

The page embeds every PNG as base64 (one file to share); the PNGs are also written beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from vecrag.errors import VecragError
from vecrag.fsutil import atomic_write_bytes, atomic_write_text
from vecrag.runs.layout import LOG, METRICS
from vecrag.serve.decode_views import DECISIONS, decode_views
from vecrag.serve.runs import RunInfo, read_log, training_views

DECISION_COLORS = {"SNAP": "#16a34a", "BLEND": "#f59e0b", "NOVEL": "#7c3aed"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _all_fraction(*groups: dict[str, list[list[float]]]) -> bool:
    return all(0.0 <= p[1] <= 1.0 for g in groups for pts in g.values() for p in pts)


def line_plot(title: str, series: dict[str, list[list[float]]], xlabel: str, *,
              baselines: dict[str, list[list[float]]] | None = None, scale: float = 1.0, ylabel: str = "",
              logy: bool = False) -> bytes | None:
    """One line per series; baselines as dashed horizontal lines at their latest value. None if no data."""
    baselines = baselines or {}
    if not series and not baselines:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 3.4))
    xs = [p[0] for pts in (*series.values(), *baselines.values()) for p in pts]
    for name, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] * scale for p in pts], marker="o" if len(pts) <= 60 else None,
                markersize=3, linewidth=1.4, label=name)
    for name, pts in baselines.items():
        ax.axhline(pts[-1][1] * scale, linestyle="--", linewidth=1.2, label=name, color=None)
    if xs and min(xs) == max(xs):
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    if logy and all(p[1] > 0 for pts in series.values() for p in pts):
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2 if len(series) + len(baselines) > 6 else 1)
    return _png(fig)


def decision_plot(by_lane: dict[str, dict[str, float]]) -> bytes | None:
    if not by_lane:
        return None
    plt = _plt()
    lanes = list(by_lane)
    fig, ax = plt.subplots(figsize=(7.0, 3.4))
    bottom = [0.0] * len(lanes)
    for k in DECISIONS:
        vals = [by_lane[ln][k] for ln in lanes]
        ax.bar(lanes, vals, bottom=bottom, label=k, color=DECISION_COLORS[k])
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of steps")
    ax.set_title("% SNAP / BLEND / NOVEL by lane")
    ax.legend(fontsize=8)
    return _png(fig)


def c_plot(hist: dict[str, Any] | None) -> bytes | None:
    if not hist or not hist.get("counts"):
        return None
    plt = _plt()
    edges, counts = hist["edges"], hist["counts"]
    fig, ax = plt.subplots(figsize=(7.0, 3.4))
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:], strict=True)], align="edge",
           color="#0891b2")
    ax.set_xlabel("c = max cos(v_hat, shortlist)")
    ax.set_ylabel("steps")
    ax.set_title(f"distribution of c ({sum(counts)} steps)")
    return _png(fig)


def build_plots(recs: list[dict[str, Any]], decode: dict[str, Any]) -> dict[str, bytes]:
    v = training_views(recs)
    scale = 100.0 if _all_fraction(v["recall"], v["recall_baselines"]) else 1.0
    plots = {
        "loss": line_plot("training loss", v["loss"], "step"),
        "lr": line_plot("learning rate", v["lr"], "step"),
        "throughput": line_plot("samples/s", v["throughput"], "step"),
        "memory": line_plot("memory (MB): RSS and CUDA", v["memory"], "step", ylabel="MB"),
        "miner": line_plot("miner statistics", v["miner"], "step"),
        "task": line_plot("task statistics", v["task"], "step"),
        "recall": line_plot("Recall@K per epoch (dashed: baselines)", v["recall"], v["val_x"],
                            baselines=v["recall_baselines"], scale=scale, ylabel="%" if scale == 100 else ""),
        "val_other": line_plot("other validation metrics (dashed: baselines)", v["val_other"], v["val_x"],
                               baselines=v["val_other_baselines"]),
        "decisions": decision_plot(decode["by_lane"]),
        "c_hist": c_plot(decode["c_hist"]),
    }
    return {k: b for k, b in plots.items() if b is not None}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else (f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}")
    if isinstance(v, list | dict):
        return html.escape(json.dumps(v)[:120])
    return html.escape(str(v))


def _table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(k, ''))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


SECTIONS = (("Training", ("loss", "lr", "throughput", "memory", "miner", "task")),
            ("Validation", ("recall", "val_other")), ("Decoding", ("decisions", "c_hist")))
CSS = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:1em auto;color:#222}"
       "img{max-width:100%;border:1px solid #ddd;margin:.3em}.grid{display:flex;flex-wrap:wrap}"
       "table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .5em}"
       ".muted{color:#777}")


def render_html(run_name: str, recs: list[dict[str, Any]], decode: dict[str, Any], plots: dict[str, bytes]) -> str:
    val = [r for r in recs if r.get("kind") == "val"]
    events = [r for r in recs if r.get("kind") == "event"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>vecrag report: {html.escape(run_name)}"
             f"</title><style>{CSS}</style></head><body><h1>vecrag run report: {html.escape(run_name)}</h1>",
             f"<p class='muted'>generated {time.strftime('%Y-%m-%d %H:%M:%S')}; {len(recs)} log records "
             f"({sum(r.get('kind') == 'train' for r in recs)} train, {len(val)} val); decoding from "
             f"{html.escape(', '.join(decode['sources']) or 'no decode telemetry or eval JSON')}</p>"]
    for title, keys in SECTIONS:
        imgs = [f"<img alt='{k}' src='data:image/png;base64,{base64.b64encode(plots[k]).decode()}'>"
                for k in keys if k in plots]
        parts.append(f"<h2>{title}</h2>" + (f"<div class='grid'>{''.join(imgs)}</div>" if imgs else
                                            "<p class='muted'>no data in this run</p>"))
        if title == "Validation" and val:
            keys_v = ["epoch", "step"] + sorted({k for r in val for k, v in r.items() if k not in
                                                ("kind", "time", "epoch", "step") and isinstance(v, int | float)
                                                and not isinstance(v, bool)})
            parts.append(_table(val, keys_v[:24]))
        if title == "Decoding" and decode["by_lane"]:
            rows = [{"lane": ln, **{k: round(v, 2) for k, v in d.items()}} for ln, d in decode["by_lane"].items()]
            parts.append(_table(rows, ["lane", *DECISIONS]))
    if events:
        parts.append("<h2>Events</h2>" + _table(events[-50:], sorted({k for r in events for k in r} - {"kind"})))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``OUT/report.html`` (+ one PNG per view) for the run directory; return the HTML path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VecragError("run directory not found", path=run_dir, hint="pass a directory from `vecrag train ...`")
    log = run_dir / LOG
    if not log.is_file() and not (run_dir / METRICS).is_dir():
        raise VecragError("not a run directory (no log.jsonl and no metrics/)", path=run_dir,
                          hint="pass the directory a `vecrag train` command wrote")
    recs = read_log(log) if log.is_file() else []
    resolved = run_dir.resolve()
    decode = decode_views(RunInfo(run_dir.name, resolved, resolved))
    plots = build_plots(recs, decode)
    out_dir = Path(out) if out is not None else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, png in plots.items():
        atomic_write_bytes(out_dir / f"{name}.png", png)
    page = out_dir / "report.html"
    atomic_write_text(page, render_html(run_dir.resolve().name, recs, decode, plots))
    return page
