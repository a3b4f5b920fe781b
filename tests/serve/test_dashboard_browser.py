"""The dashboard in a real browser: `vecrag serve` on loopback, a real tiny training run, headless Chromium.

Checks that it reads at a glance: every series drawn by default has a visible range on its axis (measured with
Chart.js's own scales), at most 6 series per chart, counters and constant series hidden but one legend click away,
validation in one panel per metric, the decoding and rollout views filled from telemetry and `vecrag eval
generate`, and the playground's continuation never repeats a chunk, a text or the prompt.

Needs Debian's chromium at /usr/bin/chromium (`apt-get install -y chromium`); Playwright's own browser
downloads are not used. Saves a screenshot to docs/img/dashboard.png (referenced from the README).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_synthetic_bank
from tests.serve.test_serve import make_text_bank
from vecrag.serve.ready import free_port, stop, wait_ready

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
# The committed README screenshot is refreshed only on request (VECRAG_SCREENSHOT=docs/img/dashboard.png), so that
# `make test` leaves the tree clean; by default the screenshot goes to a temp folder.
SCREENSHOT = Path(os.environ.get("VECRAG_SCREENSHOT") or Path(tempfile.gettempdir()) / "vecrag-dashboard.png")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUN = "retriever-tiny"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not found at /usr/bin/chromium "
                       "(install it with `apt-get install -y chromium`)"),
]


ENV = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}


def _start(log: Path, *args: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "vecrag.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=REPO, env=ENV)


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{' '.join(proc.args[3:5])} took over {timeout} s:\n{log.read_text()[-3000:]}")
    assert rc == 0, f"{' '.join(map(str, proc.args[3:]))} failed ({rc}):\n{log.read_text()[-3000:]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("playwright.sync_api")
    base = tmp_path_factory.mktemp("dash")
    bank = make_text_bank(base / "bank", n_articles=24, per_article=8)  # served: text in, real encoder
    # trained on: a random-walk bank big enough for a val split worth plotting (~100 queries)
    train_bank = make_synthetic_bank(base / "train-bank", n_articles=120, per_article=10)
    runs = base / "runs"
    run = runs / RUN
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # three real processes at once (each spends seconds importing torch): a tiny two-tower training run with
    # hard-negative mining from epoch 1, decoding with telemetry into the run directory, and the server
    train = _start(base / "train.log", "train", "retriever", str(train_bank.path), "train.log_every=3",
                   "--config", "retriever-tiny", "--out", str(run), "--quiet")
    run.mkdir(parents=True, exist_ok=True)
    # (uncalibrated: the calibrated profiles would refuse; gtr-t5's absolute thresholds give a decision mix)
    gen = _start(base / "generate.log", "generate", str(bank.path), "--prompt-ids", "0,1,2", "--steps", "16",
                 "--profile", "gtr-t5", "--timeout-ms", "0", "--telemetry", str(run / "decode.jsonl"), "--json")
    # rollouts for the rollout view (`vecrag eval generate --out RUN/metrics`, as `make demo` writes them)
    roll = _start(base / "rollouts.log", "eval", "generate", str(train_bank.path), "--lvm", "heuristic:ewma",
                  "--retriever", "heuristic:last", "--profile", "gtr-t5", "--split", "val", "--prompt-chunks", "3",
                  "--steps", "6", "--timeout-ms", "0", "--out", str(run / "metrics"), "--quiet")
    proc = _start(base / "server.log", "serve", str(bank.path), "--runs", str(runs), "--port", str(port),
                  "--device", "cpu", "--log-level", "warning")
    try:
        _finish(train, base / "train.log")
        _finish(gen, base / "generate.log")
        _finish(roll, base / "rollouts.log")
        why = wait_ready(url, proc, 90)
        if why:
            pytest.fail(f"{why}:\n{(base / 'server.log').read_text()}")
        yield url, run
    finally:
        for p in (train, gen, roll, proc):
            stop(p)


CHART_POINTS = """() => Object.fromEntries(Object.entries(window.vecragCharts).map(([id, ch]) => [id,
    ch.data.datasets.map((d, i) => ({label: d.label, n: d.data.filter(v => v !== null && v !== undefined).length,
                                     visible: ch.isDatasetVisible(i),
                                     dashed: Array.isArray(d.borderDash) && d.borderDash.length > 0}))]))"""

INKED_PIXELS = """(id) => { const c = document.getElementById(id); const g = c.getContext('2d');
    const px = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++; return [n, c.width * c.height]; }"""

# Where every drawn series lies, from Chart.js's own scales (value -> pixel): a line's pixel span and its share of
# its axis's range; for a series flat by nature (a baseline, a single point) its distance to the axis's ends; for
# bars the longest bar in pixels.
SERIES_GEOMETRY = """(only) => {
  const out = [];
  for (const [id, ch] of Object.entries(window.vecragCharts)) {
    if (only && id !== only) continue;
    const area = ch.chartArea, horizontal = ch.options.indexAxis === "y";
    ch.data.datasets.forEach((d, i) => {
      const meta = ch.getDatasetMeta(i);
      const scale = ch.scales[horizontal ? meta.xAxisID : meta.yAxisID];
      const vals = d.data.map(p => (p !== null && typeof p === "object") ? (horizontal ? p.x : p.y) : p)
                         .filter(v => v !== null && v !== undefined && isFinite(v));
      const row = {chart: id, label: d.label, visible: ch.isDatasetVisible(i), n: vals.length, type: meta.type,
                   axis: scale ? scale.id : null, axis_shown: scale ? scale.options.display !== false : false,
                   axis_title: scale && scale.options.title.display ? scale.options.title.text : ""};
      if (row.visible && vals.length && scale) {
        if (meta.type === "bar") {
          row.bar_px = Math.max(...meta.data.map(b => Math.abs((horizontal ? b.x : b.y) - b.base)));
        } else {
          const px = vals.map(v => scale.getPixelForValue(v));
          const lo = Math.min(...vals), hi = Math.max(...vals);
          row.flat = hi === lo;
          row.span_px = Math.max(...px) - Math.min(...px);
          row.share = (hi - lo) / (scale.max - scale.min);
          row.edge_px = Math.min(Math.min(...px) - area.top, area.bottom - Math.max(...px));
        }
      }
      out.push(row);
    });
  }
  return out;
}"""

LEGEND_ITEM = """([id, label]) => { const ch = window.vecragCharts[id];
  const i = ch.legend.legendItems.findIndex(it => it.text === label); const b = ch.legend.legendHitBoxes[i];
  ch.canvas.scrollIntoView({block: "center"}); const r = ch.canvas.getBoundingClientRect();
  return [r.left + b.left + b.width / 2, r.top + b.top + b.height / 2]; }"""

QUEUE_LEN_VISIBLE = """(() => { const ch = window.vecragCharts["chart-task"];
  return ch.isDatasetVisible(ch.data.datasets.findIndex(d => d.label === "queue_len")); })()"""

COUNTERS = {"queue_len", "samples_seen", "samples", "n_val", "n_neg", "n_queries"}


def drawn_badly(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The visible series that do not read: a varying line under 3 px and 1 % of its axis (flat on the axis), a
    flat series (baseline, single point) within 2 px of its axis's ends or outside, a bar set with no bar 3 px long."""
    bad = []
    for r in rows:
        if not r["visible"] or not r["n"]:
            continue
        if r["type"] == "bar":
            ok = r["bar_px"] >= 3
        elif r["flat"]:
            ok = r["edge_px"] > 2
        else:
            ok = (r["span_px"] > 3 or r["share"] > 0.01) and r["edge_px"] >= -1
        if not ok:
            bad.append(r)
    return bad


def test_dashboard_renders_a_real_run(server):
    from playwright.sync_api import sync_playwright

    url, run = server
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    n_train = sum(r["kind"] == "train" for r in recs)
    n_val = sum(r["kind"] == "val" for r in recs)
    n_mining = sum(r["kind"] == "mining" for r in recs)
    assert n_train >= 5 and n_val >= 2 and n_mining >= 1, "the tiny training run logged too little to chart"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/?run={RUN}", wait_until="networkidle")
            page.wait_for_function("window.vecragState && window.vecragState.loaded >= 1", timeout=20_000)
            assert page.evaluate("window.vecragState.errors") == []
            assert page.input_value("#run-select") == RUN
            assert page.input_value("#decode-run") == RUN  # the run has decoding outputs: its own are shown
            charts = page.evaluate(CHART_POINTS)

            def points(cid: str, dashed: bool | None = None) -> int:
                return sum(d["n"] for d in charts[cid] if dashed is None or d["dashed"] == dashed)

            # every series of the log is charted (drawn or one legend click away)
            assert points("chart-loss") == n_train
            for cid in ("chart-lr", "chart-throughput", "chart-memory"):
                assert points(cid) >= n_train, cid
            miner = {d["label"].removesuffix(" (right)"): d for d in charts["chart-miner"]}
            assert miner["mined sync %"]["visible"] and miner["mined sync %"]["n"] > 0, miner  # a rate, not a total
            assert points("chart-rounds") >= n_mining and points("chart-task") > 0
            # validation: one small panel per metric (model line + dashed baselines), n_val never beside them
            panels = {cid: ds for cid, ds in charts.items() if cid.startswith("chart-val-")}
            metrics = {r for rec in recs if rec["kind"] == "val" for r in rec if r.startswith(("R@", "MRR@"))}
            assert len(panels) >= len(metrics) >= 2
            for cid, ds in panels.items():
                assert sum(d["n"] for d in ds if not d["dashed"]) == n_val, (cid, ds)
                assert any(d["dashed"] and d["label"].startswith("baseline") for d in ds), (cid, ds)
                assert not any(d["label"] in COUNTERS for d in ds), (cid, ds)

            # decoding: the telemetry's steps in the decision mix and in the distribution of c; rollouts
            tele = [json.loads(x) for x in (run / "decode.jsonl").read_text().splitlines()]
            labels = page.evaluate("window.vecragCharts['chart-decisions'].data.labels")
            assert f"generate · all lanes ({len(tele)})" in labels, labels
            c_counts = page.evaluate("window.vecragCharts['chart-c'].data.datasets.map(d => [d.label, "
                                     "d._counts.reduce((a, b) => a + b, 0)])")
            assert c_counts == [[f"generate ({len(tele)} steps)", sum(r.get("c") is not None for r in tele)]]
            rollouts = json.loads(next((run / "metrics").glob("generate_eval-*.json")).read_text())
            gens = [k for k in rollouts["rows"] if not k.startswith("true ")]  # the truth is a ceiling, not drawn
            assert page.evaluate("window.vecragCharts['chart-rollout-coverage'].data.labels") == gens
            assert {d["label"] for d in charts["chart-rollout-cos"]} == set(gens)
            assert points("chart-rollout-cos") == len(gens) * rollouts["S"]

            # read at a glance: every drawn series has a visible range on its own axis, at most 6 drawn per chart,
            # counters and constant series hidden by default (struck through in the legend)
            geometry = page.evaluate(SERIES_GEOMETRY)
            assert drawn_badly(geometry) == [], drawn_badly(geometry)
            by_chart: dict[str, list[dict[str, Any]]] = {}
            for r in geometry:
                by_chart.setdefault(r["chart"], []).append(r)
            for cid, rows in by_chart.items():
                assert sum(r["visible"] for r in rows) <= 6, (cid, [r["label"] for r in rows if r["visible"]])
                assert all(r["axis_shown"] for r in rows if r["visible"]), cid
                titles = {r["axis"]: r["axis_title"] for r in rows if r["visible"] and r["axis_title"]}
                assert len(set(titles.values())) == len(titles), (cid, titles)  # never one unit on two axes
                for r in rows:
                    if r["label"].removesuffix(" (right)") in COUNTERS:
                        assert not r["visible"], r
            hidden = [r for r in geometry if not r["visible"] and r["n"]]
            assert any(r["label"] == "queue_len" for r in hidden), hidden
            for cid in ("chart-loss", "chart-miner", "chart-task", "chart-val-0", "chart-decisions", "chart-c",
                        "chart-rollout-coverage", "chart-rollout-cos"):
                inked, total = page.evaluate(INKED_PIXELS, cid)
                assert inked > 0.005 * total, f"{cid} canvas looks blank ({inked}/{total} pixels drawn)"

            # one click away: a click on a struck-through legend entry draws that series, on an axis of its own
            # (the others keep theirs), and it reads too; a second click hides it again
            before = {(r["label"], r["axis"]) for r in geometry if r["chart"] == "chart-task" and r["visible"]}
            for visible in (True, False):
                page.mouse.click(*page.evaluate(LEGEND_ITEM, ["chart-task", "queue_len"]))
                # Chart.js handles canvas events on the next animation frame
                page.wait_for_function(QUEUE_LEN_VISIBLE + ("" if visible else " === false"), timeout=5_000)
                if visible:
                    after = page.evaluate(SERIES_GEOMETRY, "chart-task")
                    shown = next(r for r in after if r["label"] == "queue_len")
                    assert shown["axis_shown"] and shown["axis"].startswith("yh"), shown
                    assert drawn_badly(after) == [], drawn_badly(after)
                    assert before <= {(r["label"], r["axis"]) for r in after if r["visible"]}

            check_playground(page, url)
            assert errors == [], errors

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            tmp = SCREENSHOT.with_suffix(".tmp.png")
            page.screenshot(path=str(tmp), full_page=True)
            shutil.move(tmp, SCREENSHOT)
            assert SCREENSHOT.stat().st_size > 20_000
        finally:
            browser.close()


PROMPT = "Ships sail across the wide ocean. Sailors navigate by the stars at night."
STEPS = 6


def check_playground(page: Any, url: str) -> None:
    """The profile picker offers the server's profiles (default preselected, calibrated ones disabled without a
    calibration); the prompt and its continuation read as one passage (approximate steps marked [~ ...]) that
    never repeats a chunk nor the prompt, with the per-step table below."""
    dec = httpx.get(f"{url}/healthz", timeout=10).json()["decoder"]
    page.wait_for_function("document.querySelectorAll('#gen-profile option').length > 1", timeout=20_000)
    options = page.eval_on_selector_all("#gen-profile option", "os => os.map(o => [o.value, o.disabled])")
    assert [name for name, _ in options] == dec["profiles"]
    assert {name for name, off in options if not off} == set(dec["available_profiles"])
    assert page.input_value("#gen-profile") == dec["default_profile"]
    assert not dec["calibrated"] and dec["calibrate_command"] in page.text_content("#gen-calibration")

    page.fill("#gen-prompt", PROMPT)
    page.fill("#gen-steps", str(STEPS))
    page.click("#gen-run")
    page.wait_for_function(f"document.querySelectorAll('#gen-table tbody tr').length === {STEPS}", timeout=20_000)
    cells = "els => els.map(e => e.textContent)"
    decisions = page.eval_on_selector_all("#gen-table tbody tr td:nth-child(2)", cells)
    assert set(decisions) <= {"SNAP", "BLEND", "NOVEL"}
    assert all(page.eval_on_selector_all("#gen-table tbody tr td:nth-child(7)", cells))
    assert "steps in" in page.text_content("#gen-status")

    assert page.is_visible("#gen-passage")
    prompt_shown = page.text_content("#gen-prompt-text")
    assert prompt_shown.split() == PROMPT.split()
    spans = page.eval_on_selector_all(
        "#gen-continuation .step", "els => els.map(e => [e.dataset.textId, e.className, e.textContent])")
    ids = [int(i) for i, _, _ in spans]
    assert len(spans) == STEPS and all(i >= 0 for i in ids) and len(set(ids)) == len(ids), spans  # no repeats
    texts = [t[3:-1] if "approx" in cls else t for _, cls, t in spans]
    assert all(t and t not in PROMPT for t in texts), texts  # no echo of the prompt
    assert len(set(texts)) == len(texts), texts  # nor a text twice (two chunks of one text count as a repeat)
    for _, cls, t in spans:
        assert ("approx" in cls) == t.startswith("[~ "), (cls, t)
    # the passage is the server's continuation, as `vecrag generate` prints it (decoding is deterministic)
    api = httpx.post(f"{url}/generate", json={"prompt": PROMPT, "steps": STEPS, "k": 5,
                                              "profile": dec["default_profile"]}, timeout=60).json()
    assert page.text_content("#gen-continuation") == api["continuation"]
    assert [s["text_id"] for s in api["steps"]] == ids
