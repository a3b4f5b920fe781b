"""Screenshot of the dashboard on real runs: serve BANK with the runs' LVM and retriever, open the dashboard in
Debian's chromium (Playwright, no downloaded browser), pick RUN, generate from PROMPT in the playground, save a PNG.
The decoding views show the first run with decoding outputs when RUN has none (`make demo` writes them to the LVM
run: decode.jsonl, metrics/decode_eval-*.json, metrics/generate_eval-*.json, calibration.json).
Refuses to write the PNG when the page reports an error or the continuation repeats a chunk.

    python scripts/dashboard_screenshot.py demo_out/wiki-300 --runs demo_out/runs --run retriever \\
        --lvm demo_out/runs/lvm --retriever demo_out/runs/retriever --out docs/img/dashboard.png

Needs `pip install playwright` (the test extra) and /usr/bin/chromium (`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
PROMPT = "Alabama is a state in the southeastern region of the United States. It became a state in 1819."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bank")
    ap.add_argument("--runs", required=True, help="runs directory the dashboard lists")
    ap.add_argument("--run", required=True, help="the run shown (a folder name under --runs)")
    ap.add_argument("--lvm", required=True)
    ap.add_argument("--retriever", required=True)
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="docs/img/dashboard.png")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    from vecrag.serve.ready import free_port, stop, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "vecrag.cli", "serve", args.bank, "--runs", args.runs,
                               "--lvm", args.lvm, "--retriever", args.retriever, "--port", str(port),
                               "--device", "cpu", "--log-level", "warning"], env=env)
    try:
        why = wait_ready(url, server, 120, poll_s=0.5)
        if why:
            print(why, file=sys.stderr)
            return 1
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{url}/?run={args.run}", wait_until="networkidle")
                page.wait_for_function("window.vecragState && window.vecragState.loaded >= 1", timeout=30_000)
                page.wait_for_function("document.querySelectorAll('#gen-profile option').length > 1",
                                       timeout=30_000)
                page.fill("#gen-prompt", args.prompt)
                page.fill("#gen-steps", str(args.steps))
                page.click("#gen-run")
                page.wait_for_function(f"document.querySelectorAll('#gen-table tbody tr').length === {args.steps}",
                                       timeout=60_000)
                errors += page.evaluate("window.vecragState.errors")
                ids = page.eval_on_selector_all("#gen-continuation .step", "els => els.map(e => e.dataset.textId)")
                if errors or len(set(ids)) != len(ids):
                    print(f"not written: page errors {errors}, continuation ids {ids}", file=sys.stderr)
                    return 1
                out = Path(args.out)
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_suffix(".tmp.png")
                page.screenshot(path=str(tmp), full_page=True)
                tmp.replace(out)
                print(f"wrote {out}")
            finally:
                browser.close()
    finally:
        stop(server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
