"""The dashboard in a real browser: `vecrag serve` on loopback, a real tiny training run, headless Chromium.

Needs Debian's chromium at /usr/bin/chromium (`apt-get install -y chromium`); Playwright's own browser
downloads are not used. Saves a screenshot to docs/img/dashboard.png (referenced from the README).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import make_synthetic_bank
from tests.test_serve import make_text_bank

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("playwright.sync_api")
    base = tmp_path_factory.mktemp("dash")
    bank = make_text_bank(base / "bank", n_articles=24, per_article=8)  # served: text in, real encoder
    # trained on: a random-walk bank big enough for a val split worth plotting (~100 queries)
    train_bank = make_synthetic_bank(base / "train-bank", n_articles=120, per_article=10)
    runs = base / "runs"
    run = runs / RUN
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # three real processes at once (each spends seconds importing torch): a tiny two-tower training run with
    # hard-negative mining from epoch 1, decoding with telemetry into the run directory, and the server
    train = _start(base / "train.log", "train", "retriever", str(train_bank.path), "train.log_every=3",
                   "--config", "retriever-tiny", "--out", str(run), "--quiet")
    run.mkdir(parents=True, exist_ok=True)
    # (uncalibrated: the calibrated profiles would refuse; gtr-t5's absolute thresholds give a decision mix)
    gen = _start(base / "generate.log", "generate", str(bank.path), "--prompt-ids", "0,1,2", "--steps", "16",
                 "--profile", "gtr-t5", "--timeout-ms", "0", "--telemetry", str(run / "decode.jsonl"), "--json")
    proc = _start(base / "server.log", "serve", str(bank.path), "--runs", str(runs), "--port", str(port),
                  "--device", "cpu", "--log-level", "warning")
    try:
        _finish(train, base / "train.log")
        _finish(gen, base / "generate.log")
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vecrag serve exited with {proc.returncode}:\n{(base / 'server.log').read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                pytest.fail("vecrag serve did not answer /healthz within 90 s")
            time.sleep(0.3)
        yield url, run
    finally:
        for p in (train, gen, proc):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


CHART_POINTS = """() => Object.fromEntries(Object.entries(window.vecragCharts).map(([id, ch]) => [id,
    ch.data.datasets.map(d => ({label: d.label, n: d.data.filter(v => v !== null && v !== undefined).length,
                                dashed: Array.isArray(d.borderDash) && d.borderDash.length > 0}))]))"""

INKED_PIXELS = """(id) => { const c = document.getElementById(id); const g = c.getContext('2d');
    const px = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) n++; return [n, c.width * c.height]; }"""


def test_dashboard_renders_a_real_run(server):
    from playwright.sync_api import sync_playwright

    url, run = server
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    n_train = sum(r["kind"] == "train" for r in recs)
    n_val = sum(r["kind"] == "val" for r in recs)
    assert n_train >= 5 and n_val >= 2, "the tiny training run logged too little to chart"
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
            charts = page.evaluate(CHART_POINTS)

            def points(cid: str, dashed: bool | None = None) -> int:
                return sum(d["n"] for d in charts[cid] if dashed is None or d["dashed"] == dashed)

            assert points("chart-loss") == n_train
            for cid in ("chart-lr", "chart-throughput", "chart-memory"):
                assert points(cid) >= n_train, cid
            miner_labels = {d["label"] for d in charts["chart-miner"]}
            assert any(lbl.startswith("mining_") for lbl in miner_labels) and points("chart-miner") > 0, miner_labels
            assert points("chart-task") > 0
            assert points("chart-recall", dashed=False) >= n_val  # R@k per epoch
            assert any(d["dashed"] and d["label"].startswith("baseline_R@") for d in charts["chart-recall"])
            assert points("chart-decisions") > 0 and points("chart-c") > 0
            tele = [json.loads(x) for x in (run / "decode.jsonl").read_text().splitlines()]
            hist_total = page.evaluate("window.vecragCharts['chart-c'].data.datasets[0].data"
                                       ".reduce((a, b) => a + b, 0)")
            assert hist_total == sum(r.get("c") is not None for r in tele)
            for cid in ("chart-loss", "chart-recall", "chart-decisions", "chart-c"):
                inked, total = page.evaluate(INKED_PIXELS, cid)
                assert inked > 0.005 * total, f"{cid} canvas looks blank ({inked}/{total} pixels drawn)"

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
    for _, cls, t in spans:
        assert ("approx" in cls) == t.startswith("[~ "), (cls, t)
    # the passage is the server's continuation, as `vecrag generate` prints it (decoding is deterministic)
    api = httpx.post(f"{url}/generate", json={"prompt": PROMPT, "steps": STEPS, "k": 5,
                                              "profile": dec["default_profile"]}, timeout=60).json()
    assert page.text_content("#gen-continuation") == api["continuation"]
    assert [s["text_id"] for s in api["steps"]] == ids
