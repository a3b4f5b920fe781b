"""A `vecrag serve` process started by a script, a benchmark or a test: a free port for it, waiting for it to answer
``/healthz``, and stopping it."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen, timeout_s: float = 10) -> None:
    """Terminate ``proc`` if it still runs; kill it when it has not exited ``timeout_s`` later."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


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
