"""`vecrag report RUN`: a real tiny training run + real decoding outputs -> HTML with embedded PNG plots."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_synthetic_bank
from vecrag.cli import main
from vecrag.errors import VecragError
from vecrag.serve.decode_views import decode_views
from vecrag.serve.report import write_report
from vecrag.serve.runs import RunInfo


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("report")
    bank = make_synthetic_bank(base / "bank", n_articles=60, per_article=10, lanes=["legal", "creative"])
    run = base / "run"
    assert main(["train", "retriever", str(bank.path), "--config", "retriever-tiny", "--out", str(run),
                 "--quiet"]) == 0
    assert main(["calibrate", str(bank.path), "--quiet", "--max-articles", "5"]) == 0  # for the default profile
    assert main(["generate", str(bank.path), "--prompt-ids", "0,1,2", "--steps", "10", "--timeout-ms", "0",
                 "--telemetry", str(run / "decode.jsonl"), "--json"]) == 0
    return bank.path, run


def _png_ok(data: bytes) -> None:
    import matplotlib.image as mpimg

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(io.BytesIO(data), format="png")
    assert img.shape[0] > 100 and img.shape[1] > 200
    assert float(np.std(img[..., :3])) > 0.02  # not a blank canvas


def test_report_from_a_real_run(trained, capsys):
    _, run = trained
    out = run.parent / "rep"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    imgs = dict(re.findall(r"<img alt='(\w+)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", page))
    # training views, recall with baselines, and decoding views are all present and drawn
    assert {"loss", "lr", "throughput", "memory", "miner", "task", "recall", "val_other", "decisions",
            "c_hist"} <= set(imgs)
    for name, b64 in imgs.items():
        data = base64.b64decode(b64)
        _png_ok(data)
        assert (out / f"{name}.png").read_bytes() == data  # the same PNG also sits beside the page
    assert "baseline_R@10" in page or "baseline_R@10" in str(imgs)  # val table lists the baselines
    assert "<h2>Events</h2>" in page and "start" in page
    assert "src='http" not in page and "<script" not in page  # self-contained, no network


def test_report_default_out_dir_and_decode_eval_json(trained, tmp_path):
    bank, run = trained
    assert main(["eval", "decode", str(bank), "--split", "val", "--lvm", "heuristic:ewma", "--retriever",
                 "heuristic:last", "--out", str(run / "metrics")]) == 0
    moved = run / "decode.jsonl.bak"
    (run / "decode.jsonl").rename(moved)  # without telemetry, the decode eval JSON is the source
    try:
        d = decode_views(RunInfo("run", run.resolve(), run.resolve()))
        assert d["sources"] and d["sources"][0].startswith("metrics/decode_eval-")
        for row in d["by_lane"].values():
            assert sum(row.values()) == pytest.approx(100.0)
        page = write_report(run)
    finally:
        moved.rename(run / "decode.jsonl")
    assert page == run / "report" / "report.html" and (run / "report" / "decisions.png").exists()
    assert not (run / "report" / "c_hist.png").exists()  # an eval JSON has no per-step c values


def test_report_errors(tmp_path):
    with pytest.raises(VecragError, match="run directory not found"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VecragError, match="not a run directory"):
        write_report(tmp_path / "empty")
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_report_of_a_run_with_only_a_log(tmp_path):
    """A run that crashed before validation: the page still renders, with 'no data' where views are empty."""
    run = tmp_path / "run"
    run.mkdir()
    lines = ['{"kind": "event", "event": "start"}', '{"kind": "train", "step": 1, "loss": 2.5, "lr": 0.001}',
             '{"kind": "train", "step": 2, "loss": 2.0, "lr": 0.001}', '{"kind": "tr']  # torn last line
    (run / "log.jsonl").write_text("\n".join(lines))
    page = write_report(run).read_text()
    assert "alt='loss'" in page and "alt='recall'" not in page and "no data in this run" in page
    make_synthetic_bank(tmp_path / "bank")  # unrelated dirs are not touched
    assert sorted(p.name for p in (run / "report").iterdir()) == ["loss.png", "lr.png", "report.html"]
