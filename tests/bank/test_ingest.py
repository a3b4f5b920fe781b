"""Ingest of real articles: a valid bank, SIGKILL + rerun == uninterrupted build, refusals, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.wiki_fixtures import (  # noqa: F401
    BATCH_CHUNKS,
    N_ARTICLES,
    ingest_args,
    real_encoder,
    run_cli,
    wiki_bank,
    wiki_jsonl,
)
from vecrag.bank.store import Bank
from vecrag.cli import main


def test_real_bank_is_valid(wiki_bank, wiki_jsonl, real_encoder):  # noqa: F811
    bank = Bank.open(wiki_bank.path, verify=True)
    m = bank.manifest
    records = [json.loads(x) for x in wiki_jsonl.read_text().splitlines()]
    assert m["n_articles"] == N_ARTICLES and bank.n > 3 * N_ARTICLES and bank.vectors.dtype == np.float16
    assert m["ingest"]["article_ids"] == "source"  # Wikipedia page ids are numeric and unique
    assert bank.articles.column("article_id").to_pylist() == [r["id"] for r in records]
    assert bank.articles.column("title").to_pylist() == [r["title"] for r in records]
    assert m["chunker"]["max_sentences"] == 3 and m["encoder"]["name"] == "all-MiniLM-L6-v2"
    st = m["ingest"]
    assert st["chunks"] == bank.n and st["articles_read"] == N_ARTICLES and st["empty_skipped"] == 0
    assert st["chunks_per_s"] > 0 and st["batches"] >= bank.n // BATCH_CHUNKS
    # positions restart at 0 in every article and run in order
    for a, first, cnt in zip(*(bank.articles.column(c).to_numpy() for c in ("article_id", "first_chunk",
                                                                           "n_chunks")), strict=True):
        assert (bank.article_of[first:first + cnt] == a).all()
        assert (bank.position_of[first:first + cnt] == np.arange(cnt)).all()
    assert all(t.strip() for t in bank.texts)
    # the stored vectors are the encoder's vectors of the stored texts
    ref = real_encoder.encode(bank.texts)
    cos = (bank.vectors_f32() * ref).sum(axis=1)
    assert cos.min() > 0.999
    assert not (bank.path / ".ingest").exists()


@pytest.mark.slow
def test_sigkill_then_rerun_gives_identical_bank(wiki_bank, wiki_jsonl, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "bank"
    args = ingest_args(wiki_jsonl, out, "--device", "cpu")
    progress = out / ".ingest" / "progress.json"
    proc = run_cli(args)
    deadline = time.monotonic() + 120
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            committed = len(json.loads(progress.read_text())["batches"])
        except (OSError, ValueError, KeyError):
            committed = 0
        if committed >= 1:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"
    assert not (out / "manifest.json").exists()
    with pytest.raises(Exception, match="interrupted"):
        Bank.open(out)
    staged = json.loads(progress.read_text())
    assert 1 <= len(staged["batches"]) and not staged["finished"]

    # a rerun with other settings is refused and names the difference and --restart; the staging is untouched
    capsys.readouterr()
    assert main([*args, "--dtype", "float32"]) == 2
    err = capsys.readouterr().err
    assert "dtype" in err and "--restart" in err and str(out / ".ingest") in err
    assert json.loads(progress.read_text()) == staged

    proc = run_cli(args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    resumed, ref = Bank.open(out, verify=True), wiki_bank
    assert np.array_equal(np.asarray(resumed.vectors).view(np.uint16), np.asarray(ref.vectors).view(np.uint16))
    assert resumed.chunks.equals(ref.chunks) and resumed.articles.equals(ref.articles)
    assert resumed.manifest["checksums"] == ref.manifest["checksums"]
    assert resumed.manifest["ingest"]["batches"] == ref.manifest["ingest"]["batches"]
    assert not (out / ".ingest").exists()


def _copy_bank(bank: Bank, dst: Path) -> Path:
    shutil.copytree(bank.path, dst)
    return dst


def _bad_files(tmp: Path) -> dict[str, Path]:
    files = {"empty": tmp / "empty.jsonl", "binary": tmp / "blob.jsonl", "latin1": tmp / "latin1.txt"}
    files["empty"].write_bytes(b"")
    files["binary"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    files["latin1"].write_bytes("Caf\xe9 cr\xe8me br\xfbl\xe9e is a dessert. It is served cold.\n".encode("latin-1"))
    return files


@pytest.mark.parametrize("kind", ["empty", "binary", "latin1"])
def test_bad_input_exit_2_and_old_bank_intact(kind, wiki_bank, tmp_path, capsys):  # noqa: F811
    out = _copy_bank(wiki_bank, tmp_path / "bank")
    bad = _bad_files(tmp_path)[kind]
    capsys.readouterr()
    assert main(["ingest", str(bad), "--out", str(out), "--overwrite", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "fix:" in err
    old = Bank.open(out, verify=True)
    assert old.manifest["checksums"] == wiki_bank.manifest["checksums"]
    assert not (out / ".ingest").exists()


def test_existing_bank_needs_overwrite(wiki_bank, wiki_jsonl, tmp_path, capsys):  # noqa: F811
    out = _copy_bank(wiki_bank, tmp_path / "bank")
    capsys.readouterr()
    assert main(ingest_args(wiki_jsonl, out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    Bank.open(out, verify=True)


def test_missing_model_exit_2(wiki_jsonl, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "bank"
    capsys.readouterr()
    assert main(ingest_args(wiki_jsonl, out, "--encoder", "no-such-org/no-such-encoder-xyz")) == 2
    err = capsys.readouterr().err
    assert "no-such-encoder-xyz" in err and "--encoder" in err
    assert not (out / ".ingest").exists()  # nothing committed, nothing left behind


def test_metadata_lanes_running_ids_and_empty_articles(real_encoder, tmp_path):  # noqa: F811
    src = tmp_path / "tiny.jsonl"
    rows = [
        {"title": "Photosynthesis", "lane": "science", "text": "Photosynthesis converts light into chemical "
         "energy in plants. It takes place in the chloroplasts.\nOxygen is released as a by-product."},
        {"title": "Empty", "lane": "science", "text": ""},
        {"title": "Battle of Hastings", "lane": "history", "text": "The Battle of Hastings was fought in 1066. "
         "William the Conqueror defeated King Harold."},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "bank"
    assert main(ingest_args(src, out, "--device", "cpu", "--dtype", "float32")) == 0
    bank = Bank.open(out, verify=True)
    st = bank.manifest["ingest"]
    assert (st["articles_read"], st["articles_kept"], st["empty_skipped"]) == (3, 2, 1)
    assert st["article_ids"] == "running"
    assert bank.articles.column("article_id").to_pylist() == [0, 2]  # running number counts the empty one
    assert bank.articles.column("lane").to_pylist() == ["science", "history"]
    assert set(bank.lanes[bank.article_of == 0]) == {"science"}
    assert bank.info()["lanes"] == {"science": 1, "history": 1}
    assert bank.manifest["lanes"]["source"] == "metadata" and bank.vectors.dtype == np.float32
