"""Session-wide real-text fixtures: the default encoder and one small real bank (shared, built once).

Import the fixtures into a test module (``from tests.wiki_fixtures import real_encoder, wiki_jsonl, wiki_bank``).
The heavy objects are cached at module level, so several test modules share one encoder and one bank per
session. The bank holds 15 short real articles of the shared enwiki corpus (~100-200 chunks) and is built
through the CLI with small commit batches (``BATCH_CHUNKS``), exactly like the SIGKILL test's runs.
"""

from __future__ import annotations

import json
import lzma
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ENWIKI_PART1

ROOT = Path(__file__).resolve().parents[1]
N_ARTICLES = 15
BATCH_CHUNKS = 16
_CACHE: dict[str, Any] = {}


def short_articles(n: int = N_ARTICLES, lo: int = 300, hi: int = 2500) -> list[dict[str, Any]]:
    """The first ``n`` articles of part-01 whose text has lo..hi characters (unmodified records)."""
    out = []
    with lzma.open(ENWIKI_PART1, "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if lo < len(d["text"]) < hi:
                out.append(d)
                if len(out) >= n:
                    break
    return out


def ingest_args(src: Path, out: Path, *extra: str) -> list[str]:
    return ["ingest", str(src), "--out", str(out), "--batch-chunks", str(BATCH_CHUNKS), "--quiet", *extra]


@pytest.fixture(scope="session")
def real_encoder() -> Any:
    from vecrag.bank.encode import load_encoder

    if "encoder" not in _CACHE:
        _CACHE["encoder"] = load_encoder(None, device="cpu")
    return _CACHE["encoder"]


@pytest.fixture(scope="session")
def wiki_jsonl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not ENWIKI_PART1.exists():
        pytest.skip(f"shared corpus not found at {ENWIKI_PART1}")
    if "jsonl" not in _CACHE:
        p = tmp_path_factory.mktemp("wiki") / "short15.jsonl"
        p.write_text("".join(json.dumps(d) + "\n" for d in short_articles()), encoding="utf-8")
        _CACHE["jsonl"] = p
    return _CACHE["jsonl"]


@pytest.fixture(scope="session")
def wiki_bank(wiki_jsonl: Path, real_encoder: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real bank of the 15 short articles, built uninterrupted by `vecrag ingest` in a fresh process (CPU,
    fp16). A fresh process, like the SIGKILL test's runs: in a process that loaded the encoder before
    `runtime.set_threads()`, a few vectors differ in the last bits (docs/bugs-and-fixes.md)."""
    from vecrag.bank.store import Bank

    if "bank" not in _CACHE:
        out = tmp_path_factory.mktemp("wikibank") / "bank"
        proc = run_cli(ingest_args(wiki_jsonl, out, "--device", "cpu"))
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        _CACHE["bank"] = out
    return Bank.open(_CACHE["bank"])


def run_cli(args: list[str]) -> subprocess.Popen:
    """`python -m vecrag.cli ARGS` in a fresh process (the package from this checkout's src/)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, "-m", "vecrag.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
