"""vecrag bank merge: merged slices == the whole bank (synthetic and real ingest), refusals, --force, atomicity."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import ENWIKI_PART1, random_walk_vectors
from tests.wiki_fixtures import real_encoder, run_cli, short_articles  # noqa: F401
from vecrag.bank.ops import merge_banks
from vecrag.bank.store import Bank, EncoderInfo, write_bank
from vecrag.cli import main
from vecrag.errors import VecragError

ENC = EncoderInfo("synthetic-random-walk", 16)


def _bank(path: Path, arts: range, *, id_of=lambda a: 1000 + 7 * a, enc: EncoderInfo = ENC, dtype: str = "float16",
          title_of=lambda a: f"Article {a}", extra: dict | None = None, per_article: int = 5) -> Bank:
    """Articles ``arts`` of one fixed random-walk corpus (article a has 3 + a % 5 chunks)."""
    counts = [3 + a % 5 for a in range(max(arts) + 1)]
    vecs, art, pos = random_walk_vectors(len(counts), counts, enc.dim, seed=3)
    keep = np.isin(art, list(arts))
    vecs, art, pos = vecs[keep], art[keep], pos[keep]
    return write_bank(path, vecs, article_ids=np.array([id_of(a) for a in art]), positions=pos,
                      texts=[f"text {a}.{p}" for a, p in zip(art, pos, strict=True)],
                      titles={id_of(a): title_of(a) for a in arts}, chunk_lanes=[f"lane{a % 3}" for a in art],
                      encoder=enc, dtype=dtype, extra=extra)


def _same_bank(a: Bank, b: Bank) -> None:
    assert a.n == b.n and a.manifest["n_articles"] == b.manifest["n_articles"]
    assert np.array_equal(np.asarray(a.vectors), np.asarray(b.vectors)) and a.vectors.dtype == b.vectors.dtype
    for t in ("chunks", "articles"):
        assert getattr(a, t).to_pylist() == getattr(b, t).to_pylist(), t


def test_merged_slices_equal_the_whole_bank(tmp_path: Path) -> None:
    whole = _bank(tmp_path / "whole", range(40))
    parts = [_bank(tmp_path / f"p{i}", r) for i, r in enumerate((range(0, 13), range(13, 30), range(30, 40)))]
    merged = merge_banks([p.path for p in parts], tmp_path / "merged")
    _same_bank(merged, whole)  # vectors, texts, positions, lanes, chunk ids, article ids/order/first_chunk/split
    merged = Bank.open(merged.path, verify=True)  # checksums recorded by the merge match the files
    m = merged.manifest["merge"]
    assert m["article_ids"] == "keep" and [x["chunk_offset"] for x in m["inputs"]] == [0, parts[0].n,
                                                                                      parts[0].n + parts[1].n]
    assert merged.manifest["encoder"] == whole.manifest["encoder"] and "index" not in merged.manifest
    splits = merged.articles.column("split").to_pylist()
    assert {"train", "val", "test"} >= set(splits) and splits.count("train") > 30


def test_running_ids_are_offset_by_the_articles_read(tmp_path: Path) -> None:
    """Running-number ids restart at 0 in every shard; offset gives the ids of one bank of the whole corpus."""
    whole = _bank(tmp_path / "whole", range(20), id_of=lambda a: a)
    a = _bank(tmp_path / "a", range(0, 8), id_of=lambda a: a,
              extra={"ingest": {"article_ids": "running", "articles_read": 9}})  # one empty article read, skipped
    b = _bank(tmp_path / "b", range(8, 20), id_of=lambda a: a - 8, extra={"ingest": {"article_ids": "running"}})
    merged = merge_banks([a.path, b.path], tmp_path / "m")
    ids = merged.articles.column("article_id").to_pylist()
    assert ids == list(range(8)) + list(range(9, 21)) and merged.manifest["merge"]["article_ids"] == "offset"
    assert merged.texts == whole.texts and np.array_equal(np.asarray(merged.vectors), np.asarray(whole.vectors))
    assert (merged.article_of == np.repeat(ids, merged.articles.column("n_chunks").to_numpy())).all()
    with pytest.raises(VecragError, match="article id 0 appears in several inputs"):
        merge_banks([a.path, b.path], tmp_path / "m2", article_ids="keep")


@pytest.mark.parametrize("what", ["encoder", "dim", "dtype", "chunker"])
def test_mismatched_banks_are_refused_naming_the_bank(what: str, tmp_path: Path) -> None:
    a = _bank(tmp_path / "a", range(0, 5), extra={"chunker": {"max_sentences": 3}})
    kw: dict = {"extra": {"chunker": {"max_sentences": 3}}}
    if what == "encoder":
        kw["enc"] = EncoderInfo("another-encoder", 16)
    elif what == "dim":
        kw["enc"] = EncoderInfo("synthetic-random-walk", 8)
    elif what == "dtype":
        kw["dtype"] = "float32"
    else:
        kw["extra"] = {"chunker": {"max_sentences": 2}}
    b = _bank(tmp_path / "b", range(5, 9), **kw)
    with pytest.raises(VecragError, match=f"cannot merge: {what} differs") as e:
        merge_banks([a.path, b.path], tmp_path / "m")
    assert e.value.path == str(b.path) and not (tmp_path / "m").exists()


def test_duplicate_titles_error_or_allowed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _bank(tmp_path / "a", range(0, 5))
    b = _bank(tmp_path / "b", range(5, 10), title_of=lambda x: f"Article {x - 5}")  # same titles, other ids
    assert main(["bank", "merge", str(a.path), str(b.path), "--out", str(tmp_path / "m")]) == 2
    assert "5 article titles appear in more than one input, e.g. 'Article" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    assert main(["bank", "merge", str(a.path), str(b.path), "--out", str(tmp_path / "m"),
                 "--allow-duplicate-titles"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["duplicate_titles"] == 5 and out["n_articles"] == 10


def test_existing_out_needs_force_and_failed_merge_leaves_no_half_bank(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _bank(tmp_path / "a", range(0, 6)), _bank(tmp_path / "b", range(6, 12))
    old = _bank(tmp_path / "out", range(20, 23))
    args = ["bank", "merge", str(a.path), str(b.path), "--out", str(old.path)]
    assert main(args) == 2 and "--out already exists" in capsys.readouterr().err
    _same_bank(Bank.open(old.path), old)
    # a damaged input (chunk table cut to 3 rows) is refused when opened, before anything is written
    c = _bank(tmp_path / "c", range(6, 12))
    pq.write_table(c.chunks.slice(0, 3), c.path / "chunks.parquet")
    with pytest.raises(VecragError, match="chunks.parquet: holds 3 rows but the manifest says"):
        merge_banks([a.path, c.path], old.path, force=True)
    _same_bank(Bank.open(old.path), old)  # the old bank is untouched
    assert not list(tmp_path.glob(".out.*"))  # no temp directory left
    # a merge that fails half-way (after the first input's rows were copied)
    calls = []

    def fail_on_second(*a: object) -> None:
        calls.append(a)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("vecrag.bank.ops.log.info", fail_on_second)
    with pytest.raises(VecragError, match="the merge stopped.*no space left on device"):
        merge_banks([a.path, b.path], old.path, force=True)
    monkeypatch.undo()
    _same_bank(Bank.open(old.path), old)
    assert not list(tmp_path.glob(".out.*"))
    assert main([*args, "--force"]) == 0
    _same_bank(Bank.open(old.path), _bank(tmp_path / "ref", range(0, 12)))


def test_sigkilled_merge_leaves_no_half_bank_and_is_cleaned_up(tmp_path: Path) -> None:
    n = 200_000
    for name, off in (("a", 0), ("b", n)):
        rng = np.random.default_rng(off)
        v = rng.standard_normal((n, 64)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        arts = off + np.arange(n) // 50
        write_bank(tmp_path / name, v, article_ids=arts, positions=np.arange(n) % 50, texts=["t"] * n,
                   titles={int(x): f"T{x}" for x in np.unique(arts)}, encoder=EncoderInfo("r", 64), dtype="float32")
    out = tmp_path / "m"
    proc = run_cli(["bank", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    t0 = time.time()
    while not list(tmp_path.glob(".m.merge-*")) and proc.poll() is None and time.time() - t0 < 60:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if out.exists():  # the kill came after the rename: then the bank is complete
        assert Bank.open(out, verify=True).n == 2 * n
    else:  # a leftover temp dir, never an OUT without manifest
        assert list(tmp_path.glob(".m.merge-*"))
        bank = merge_banks([tmp_path / "a", tmp_path / "b"], out)  # the next merge cleans the leftover
        assert bank.n == 2 * n and not list(tmp_path.glob(".m.*"))


def test_real_ingested_shards_merge_into_the_whole_bank(tmp_path: Path, real_encoder) -> None:  # noqa: ANN001,F811
    """Real ingests of 4 articles without ids (-> running ids): shards 0-1 and 2-3 merged == all 4 ingested."""
    from vecrag.bank.ingest import ingest

    if not ENWIKI_PART1.exists():
        pytest.skip(f"shared corpus not found at {ENWIKI_PART1}")
    recs = [{"title": d["title"], "text": d["text"]} for d in short_articles(4, 300, 900)]
    for name, rs in (("whole", recs), ("s0", recs[:2]), ("s1", recs[2:])):
        src = tmp_path / f"{name}.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rs), encoding="utf-8")
        ingest([str(src)], tmp_path / name, encoder=real_encoder, progress=False)
    merged = merge_banks([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m")
    whole = Bank.open(tmp_path / "whole")
    assert merged.manifest["merge"]["article_ids"] == "offset" and whole.manifest["ingest"]["article_ids"] == "running"
    assert merged.texts == whole.texts and merged.n == whole.n > 8
    for col in ("article_id", "title", "n_chunks", "first_chunk", "split"):
        assert merged.articles.column(col).to_pylist() == whole.articles.column(col).to_pylist(), col
    assert merged.chunks.drop(["text"]).to_pylist() == whole.chunks.drop(["text"]).to_pylist()
    # the encoder's last bits depend on which texts share a batch: equal up to fp16 rounding
    cos = (merged.vectors_f32() * whole.vectors_f32()).sum(1)
    assert cos.min() > 0.999
