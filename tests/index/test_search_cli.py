"""`vecrag index` and `vecrag search --id` through the CLI entry point, on a synthetic bank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_synthetic_bank
from vecrag.bank.store import Bank
from vecrag.cli import main


def test_index_then_search_by_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=80, per_article=10, dim=16)
    assert main(["index", str(bank.path), "--type", "ivf", "--nprobe", "8", "--quiet", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "index     ivf over 800 x 16" in out and "Recall@10 vs exact" in out and "build" in out
    assert Bank.open(bank.path).manifest["index"]["params"]["nprobe"] == 8

    assert main(["search", str(bank.path), "--id", "7", "-k", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in res["results"]] == [1, 2, 3, 4]
    top = res["results"][0]
    assert top["id"] == 7 and top["title"] == "Article 0" and top["text"] == "article 0 chunk 7"
    assert abs(top["score"] - 1.0) < 1e-5

    assert main(["search", str(bank.path), "--id", "7", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("query: chunk 7") and "[Article 0]" in lines[1] and len(lines) == 4


def test_search_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=10, per_article=5, dim=8)
    assert main(["search", str(bank.path), "--id", "999"]) == 2
    assert main(["search", str(bank.path), "--id", "1", "-k", "0"]) == 2
    assert main(["index", str(bank.path), "--type", "flat", "--quiet"]) == 0
    (bank.path / "index" / "flat.faiss").write_bytes(b"\0" * 64)
    assert main(["search", str(bank.path), "--id", "1"]) == 2
    err = capsys.readouterr().err
    assert "corrupt or truncated" in err and "fix: rebuild it with `vecrag index" in err
