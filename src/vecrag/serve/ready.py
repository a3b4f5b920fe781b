"""Waiting for a `vecrag serve` process started by a script, a benchmark or a test to answer ``/healthz``."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, poll_s: float = 0.3) -> str | None:
    """None once ``url/healthz`` answers 200, else why not: the process exited (with its code) or
    ``timeout_s`` passed. Each probe waits at most 2 s."""
    deadline = time.time() + timeout_s
    while True:
        if proc.poll() is not None:
            return f"vecrag serve exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return None
        except (urllib.error.URLError, OSError):
            pass
        if time.time() > deadline:
            return f"vecrag serve did not answer /healthz within {timeout_s:g} s"
        time.sleep(poll_s)
