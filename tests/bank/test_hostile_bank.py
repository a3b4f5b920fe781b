"""The bank rows (32-45) of the hostile-input review (../shared/reviews/hostile-input-cases.md) and the bank
check that ``Bank.open`` runs for every command (``vecrag.bank.check``).

Banks are synthetic (``make_synthetic_bank``: 60 articles x 12 chunks, 32-D, fp16) and damaged the way the
review damaged its copies. Every refusal: exit 2, one ``vecrag: error:`` paragraph naming the file with a
``fix:`` line, no traceback, the key words, and no file of the bank changed (hashed before and after).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import vecrag.bank.check
from tests.bank.test_hostile_ingest import ROOT, assert_refused, read_only, run, tree_hashes
from tests.conftest import make_synthetic_bank, small_tmpfs
from vecrag.bank.check import RECORD, record_paths
from vecrag.bank.store import Bank, EncoderInfo, write_bank
from vecrag.errors import VecragError
from vecrag.fsutil import sha256_file


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Check records of read-only banks go to a per-test cache, not the user's."""
    monkeypatch.setenv("VECRAG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def good_bank(path: Path, **kw) -> Bank:
    return make_synthetic_bank(path, dtype=kw.pop("dtype", "float16"), **kw)


def set_checksum(bank: Path, name: str) -> None:
    m = json.loads((bank / "manifest.json").read_text())
    m["checksums"][name] = sha256_file(bank / name)
    (bank / "manifest.json").write_text(json.dumps(m))


def nan_bank(path: Path, *, update_checksum: bool) -> Path:
    """The review's bk/nan: vectors.npy replaced by a same-shape file with a NaN row (5) and an Inf (row 9)."""
    good_bank(path)
    v = np.load(path / "vectors.npy")
    v[5, 3] = np.nan
    v[9, 0] = np.inf
    np.save(path / "vectors.npy", v)
    if update_checksum:
        set_checksum(path, "vectors.npy")
    return path


# ---- 32-34: NaN / Inf vectors -------------------------------------------------------------------------------
@pytest.mark.parametrize("update_checksum", [False, True])
def test_32_verify_names_the_first_bad_row(tmp_path, capsys, update_checksum):
    b = nan_bank(tmp_path / "nan", update_checksum=update_checksum)
    before = tree_hashes(b)
    rc, err = run(capsys, "bank", "info", b, "--verify")
    assert_refused(rc, err, str(b / "vectors.npy"), "2 vectors contain NaN or Inf (first at row 5)",
                   f"vecrag bank info {b} --verify", "rebuild")
    assert tree_hashes(b) == before


NAN_COMMANDS = {
    "index": ["index", "{b}", "--no-recall"],
    "search": ["search", "{b}", "--id", "4", "-k", "3"],
    "eval": ["eval", "baselines", "{b}", "--split", "val", "--no-text-baselines", "--quiet"],
    "train-retriever": ["train", "retriever", "{b}", "--config", "retriever-tiny", "--out", "{tmp}/runs/ret"],
    "train-lvm": ["train", "lvm", "{b}", "--config", "lvm-tiny", "--out", "{tmp}/runs/lvm"],
    "info": ["bank", "info", "{b}"],
    "split": ["bank", "split", "{b}", "--seed", "3"],
    "lanes": ["bank", "lanes", "{b}", "--lanes", "kmeans:3"],
}


@pytest.mark.parametrize("update_checksum", [False, True])
@pytest.mark.parametrize("command", list(NAN_COMMANDS))
def test_33_34_nan_bank_is_refused_by_every_command(tmp_path, capsys, command, update_checksum):
    b = nan_bank(tmp_path / "nan", update_checksum=update_checksum)
    before = tree_hashes(b)
    args = [a.format(b=b, tmp=tmp_path) for a in NAN_COMMANDS[command]]
    rc, err = run(capsys, *args)
    assert_refused(rc, err, str(b / "vectors.npy"), "NaN or Inf", "row 5", "--verify")
    assert tree_hashes(b) == before
    assert not list(tmp_path.rglob("*.pt"))  # no training step was taken


def test_record_does_not_hide_a_file_replaced_later(tmp_path, capsys):
    """A bank that passed (and was recorded) and then had its vectors replaced is checked again."""
    b = good_bank(tmp_path / "b").path
    assert run(capsys, "search", b, "--id", "4", "-k", "3")[0] == 0
    v = np.load(b / "vectors.npy")
    v[7] = np.nan
    np.save(b / "vectors.npy", v)
    set_checksum(b, "vectors.npy")
    rc, err = run(capsys, "search", b, "--id", "4", "-k", "3")
    assert_refused(rc, err, "first at row 7")


# ---- 35-38: wrong shape, truncated, another encoder, missing files -------------------------------------------
@pytest.mark.parametrize("command", [["bank", "info", "{b}"], ["index", "{b}"], ["search", "{b}", "--id", "4"]])
def test_35_wrong_dimension(tmp_path, capsys, command):
    b = good_bank(tmp_path / "wdim").path
    np.save(b / "vectors.npy", np.load(b / "vectors.npy")[:, :16].copy())
    before = tree_hashes(b)
    rc, err = run(capsys, *[a.format(b=b) for a in command])
    assert_refused(rc, err, str(b / "vectors.npy"), "(720, 16) disagrees with manifest (720 x 32)", "rebuild")
    assert tree_hashes(b) == before


@pytest.mark.parametrize("command", [["bank", "info", "{b}"], ["index", "{b}"], ["search", "{b}", "--id", "4"]])
def test_36_truncated_vectors(tmp_path, capsys, command):
    b = good_bank(tmp_path / "trunc").path
    data = (b / "vectors.npy").read_bytes()
    (b / "vectors.npy").write_bytes(data[: len(data) // 2])
    rc, err = run(capsys, *[a.format(b=b) for a in command])
    assert_refused(rc, err, str(b / "vectors.npy"), "cannot read vectors", "checksum mismatch", "rebuild")


def test_37_manifest_names_another_encoder(tmp_path, capsys):
    b = good_bank(tmp_path / "menc").path
    m = json.loads((b / "manifest.json").read_text())
    m["encoder"]["name"] = "sentence-transformers/all-mpnet-base-v2"
    (b / "manifest.json").write_text(json.dumps(m))
    rc, err = run(capsys, "search", b, "train derailment")
    assert_refused(rc, err, "cannot load encoder", "all-mpnet-base-v2")
    assert run(capsys, "bank", "info", b, "--verify")[0] == 0  # the manifest is not checksummed (review's note)


MISSING_COMMANDS = {
    "search": ["search", "{b}", "--id", "3"],
    "info-verify": ["bank", "info", "{b}", "--verify"],
    "info": ["bank", "info", "{b}"],
    "train-retriever": ["train", "retriever", "{b}", "--config", "retriever-tiny", "--out", "{tmp}/runs/r"],
    "lanes": ["bank", "lanes", "{b}", "--lanes", "kmeans:3"],
    "index": ["index", "{b}"],
    "eval": ["eval", "baselines", "{b}", "--split", "val", "--no-text-baselines", "--quiet"],
    "merge": ["bank", "merge", "{good}", "{b}", "--out", "{tmp}/merged"],
}


@pytest.mark.parametrize("command", list(MISSING_COMMANDS))
def test_38_chunks_parquet_deleted(tmp_path, capsys, command):
    b = good_bank(tmp_path / "nometa").path
    good = good_bank(tmp_path / "good", seed=1).path
    (b / "chunks.parquet").unlink()
    before = tree_hashes(b)
    rc, err = run(capsys, *[a.format(b=b, tmp=tmp_path, good=good) for a in MISSING_COMMANDS[command]])
    assert_refused(rc, err, str(b / "chunks.parquet"), "is missing", "--verify")
    assert tree_hashes(b) == before and not (tmp_path / "merged").exists()


@pytest.mark.parametrize("name", ["articles.parquet", "vectors.npy"])
def test_38_other_files_deleted(tmp_path, capsys, name):
    b = good_bank(tmp_path / "b").path
    (b / name).unlink()
    for command in (["bank", "info", b], ["search", b, "--id", "3"]):
        rc, err = run(capsys, *command)
        assert_refused(rc, err, str(b / name), "is missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_38_serve_refuses_a_bank_without_chunks(tmp_path):
    b = good_bank(tmp_path / "nometa").path
    (b / "chunks.parquet").unlink()
    proc = subprocess.run([sys.executable, "-m", "vecrag.cli", "serve", str(b), "--no-encoder", "--port",
                           str(_free_port())], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{b / 'chunks.parquet'}: this file of the bank is missing" in proc.stderr


@pytest.mark.parametrize("damage,words", [
    ("rows", ["chunks.parquet: holds 3 rows but the manifest says 720 chunks", "checksum mismatch"]),
    ("garbage", ["articles.parquet: cannot read the table"]),
    ("column", ["chunks.parquet: lacks the column(s) text"]),
    ("article-ids", ["chunks.parquet: row 12 belongs to article 0"]),
    ("chunk-ids", ["chunks.parquet: row 0 has chunk_id 1, expected 0"]),
    ("tiling", ["articles.parquet: article row 1 does not tile the chunks"]),
    ("split", ["articles.parquet: article row 0 has split 'holdout'"]),
    ("norm", ["vectors.npy: 1 vectors are not unit-norm (row 2 has norm 2.0"]),
    ("dtype", ["vectors.npy: vectors are float32, the manifest says float16"]),
    ("manifest", ["manifest.json: the manifest lacks or has bad values for n_chunks"]),
])
def test_damaged_tables_and_manifest(tmp_path, capsys, damage, words):
    """Damage the review did not try, found by the same check (tables consistent, vectors unit, manifest)."""
    b = good_bank(tmp_path / "b").path
    chunks, arts = pq.read_table(b / "chunks.parquet"), pq.read_table(b / "articles.parquet")

    def put(table: pa.Table, col: str, values: list) -> pa.Table:
        return table.set_column(table.schema.get_field_index(col), col, pa.array(values, table.schema.field(col).type))

    if damage == "rows":
        pq.write_table(chunks.slice(0, 3), b / "chunks.parquet")
    elif damage == "garbage":
        (b / "articles.parquet").write_bytes(b"PAR1" + b"garbage" * 100)
    elif damage == "column":
        pq.write_table(chunks.drop_columns(["text"]), b / "chunks.parquet")
    elif damage == "article-ids":
        ids = chunks.column("article_id").to_pylist()
        ids[12] = 0
        pq.write_table(put(chunks, "article_id", ids), b / "chunks.parquet")
    elif damage == "chunk-ids":
        pq.write_table(put(chunks, "chunk_id", list(range(1, 721))), b / "chunks.parquet")
    elif damage == "tiling":
        first = arts.column("first_chunk").to_pylist()
        first[1] += 1
        pq.write_table(put(arts, "first_chunk", first), b / "articles.parquet")
    elif damage == "split":
        pq.write_table(put(arts, "split", ["holdout"] * arts.num_rows), b / "articles.parquet")
    elif damage == "norm":
        v = np.load(b / "vectors.npy")
        v[2] *= 2
        np.save(b / "vectors.npy", v)
    elif damage == "dtype":
        np.save(b / "vectors.npy", np.load(b / "vectors.npy").astype(np.float32))
    elif damage == "manifest":
        m = json.loads((b / "manifest.json").read_text())
        del m["n_chunks"]
        (b / "manifest.json").write_text(json.dumps(m))
    if damage not in ("rows", "garbage", "dtype", "manifest"):  # checksum updated: only the content check sees it
        for name in ("vectors.npy", "chunks.parquet", "articles.parquet"):
            set_checksum(b, name)
    rc, err = run(capsys, "search", b, "--id", "3", "-k", "2")
    assert_refused(rc, err, *words)


# ---- 39-42: merge --------------------------------------------------------------------------------------------
def test_39_merge_different_dims(tmp_path, capsys):
    a = good_bank(tmp_path / "a").path
    c = good_bank(tmp_path / "c", dim=16, seed=1).path
    rc, err = run(capsys, "bank", "merge", a, c, "--out", tmp_path / "m")
    assert_refused(rc, err, "cannot merge: dim differs", "32", "16")
    assert not (tmp_path / "m").exists()


def test_40_merge_different_encoders(tmp_path, capsys):
    a = good_bank(tmp_path / "a").path
    vecs = np.load(a / "vectors.npy").astype(np.float32)
    bank = Bank.open(a)
    write_bank(tmp_path / "o", vecs, article_ids=bank.article_of + 1000, positions=bank.position_of,
               texts=bank.texts, titles={int(x) + 1000: f"Other {x}" for x in np.unique(bank.article_of)},
               encoder=EncoderInfo("another-encoder", 32), dtype="float16")
    rc, err = run(capsys, "bank", "merge", a, tmp_path / "o", "--out", tmp_path / "m")
    assert_refused(rc, err, "cannot merge: encoder differs")


def test_41_merge_self_and_out_is_an_input(tmp_path, capsys):
    a = good_bank(tmp_path / "a").path
    b = good_bank(tmp_path / "b", seed=1).path
    before = tree_hashes(a)
    assert_refused(*run(capsys, "bank", "merge", a, a, "--out", tmp_path / "m"), "the same bank is given twice")
    assert_refused(*run(capsys, "bank", "merge", a, b, "--out", a, "--force"), "--out is one of the input banks")
    assert tree_hashes(a) == before
    Bank.open(a, verify=True)


@pytest.mark.parametrize("update_checksum", [False, True])
def test_42_merge_refuses_a_damaged_source_without_verify(tmp_path, capsys, update_checksum):
    good = good_bank(tmp_path / "good").path
    bad = nan_bank(tmp_path / "nan", update_checksum=update_checksum)
    before = tree_hashes(good)
    rc, err = run(capsys, "bank", "merge", good, bad, "--out", tmp_path / "merged", "--allow-duplicate-titles",
                  "--article-ids", "offset")
    assert_refused(rc, err, str(bad / "vectors.npy"), "NaN or Inf", "row 5")
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged.*"))
    assert tree_hashes(good) == before


def test_merged_bank_is_recorded_and_opens_without_a_full_check(tmp_path, capsys, monkeypatch):
    a = good_bank(tmp_path / "a").path
    b = good_bank(tmp_path / "b", seed=1).path
    assert run(capsys, "bank", "merge", a, b, "--out", tmp_path / "m", "--allow-duplicate-titles",
               "--article-ids", "offset")[0] == 0
    monkeypatch.setattr(vecrag.bank.check, "check_content", _no_full_check)
    assert Bank.open(tmp_path / "m").n == 1440


# ---- 43-44: import --------------------------------------------------------------------------------------------
def _import_files(tmp_path: Path, n_vec: int, n_meta: int, *, nan: bool = False, dim: int = 32) -> list[str]:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((n_vec, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    if nan:
        v[3, 1] = np.nan
    np.save(tmp_path / "v.npy", v)
    rows = [{"article_id": i // 5, "position": i % 5, "text": f"text {i}"} for i in range(n_meta)]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["bank", "import", "--vectors", str(tmp_path / "v.npy"), "--meta", str(tmp_path / "meta.jsonl"),
            "--encoder-name", "fake-32", "--out", str(tmp_path / "imp")]


@pytest.mark.parametrize("case,extra,words", [
    ("mismatch", [], ["meta.jsonl", "100 metadata rows for 90 vectors"]),                       # 43
    ("nan", [], ["v.npy", "1 vectors contain NaN or Inf (first at row 3)"]),                     # 44
    ("nan-normalize", ["--normalize"], ["v.npy", "NaN or Inf (first at row 3)"]),
    ("dim", ["--dim", "384"], ["vectors have dimension 32, expected 384"]),
])
def test_43_44_import_refusals(tmp_path, capsys, case, extra, words):
    n_vec = 90 if case == "mismatch" else 100
    args = _import_files(tmp_path, n_vec, 100, nan=case.startswith("nan"))
    rc, err = run(capsys, *args, *extra)
    assert_refused(rc, err, *words)
    assert not (tmp_path / "imp" / "manifest.json").exists()


# ---- 45: read-only bank, and file-system failures while rewriting a bank ----------------------------------------
@pytest.mark.parametrize("command,words", [
    (["bank", "split", "{b}", "--seed", "3"], ["cannot write the new split", "the bank is unchanged"]),
    (["index", "{b}", "--type", "flat"], ["cannot save the index", "unchanged"]),
    (["bank", "lanes", "{b}", "--lanes", "kmeans:3"], ["cannot write the new lanes", "unchanged"]),
])
def test_45_read_only_bank(tmp_path, capsys, command, words):
    b = good_bank(tmp_path / "ro").path
    (b / RECORD).unlink()  # the check record must then go to the user cache
    before = tree_hashes(b)
    with read_only(b):
        rc, err = run(capsys, *[a.format(b=b) for a in command])
        assert_refused(rc, err, str(b), *words)
        assert any(w in err for w in ("not permitted", "permission denied", "read-only"))
        assert run(capsys, "search", b, "--id", "3", "-k", "2")[0] == 0  # reading still works
    assert tree_hashes(b) == before
    Bank.open(b, verify=True)


def _no_full_check(*a: object, **k: object) -> None:
    raise AssertionError("the full content check ran although a record matches the files")


def test_read_only_bank_records_its_check_in_the_user_cache(tmp_path, user_cache, monkeypatch):
    b = good_bank(tmp_path / "ro").path
    (b / RECORD).unlink()
    with read_only(b):
        Bank.open(b)  # full check; the record cannot go into the bank
        assert not (b / RECORD).exists() and record_paths(b)[1].exists()
        monkeypatch.setattr(vecrag.bank.check, "check_content", _no_full_check)
        Bank.open(b)


@pytest.mark.parametrize("fail_at", ["table", "manifest"])
def test_disk_full_during_split_keeps_the_old_bank(tmp_path, capsys, monkeypatch, fail_at):
    """ENOSPC writing the new articles table, or the manifest after it: the bank is as it was, and verifies."""
    import vecrag.bank.store as vb

    b = good_bank(tmp_path / "b").path
    before = tree_hashes(b)
    target = "atomic_write_parquet" if fail_at == "table" else "atomic_write_json"
    real = getattr(vb, target)

    def full(path, obj):
        if fail_at == "manifest" and Path(path).name != "manifest.json":
            return real(path, obj)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(vb, target, full)
    rc, err = run(capsys, "bank", "split", b, "--seed", "9")
    assert_refused(rc, err, "no space left on device", "the bank is unchanged")
    monkeypatch.undo()
    assert tree_hashes(b) == before
    assert not [p for p in b.iterdir() if ".before-" in p.name]
    Bank.open(b, verify=True)


def test_disk_full_on_a_small_tmpfs_for_split(tmp_path, capsys):
    """A bank on a full tmpfs: `bank split` refuses with the disk-full message and the bank still verifies."""
    with small_tmpfs(tmp_path / "small", "1m") as mnt:
        b = good_bank(mnt / "b", n_articles=100).path
        with open(mnt / "filler", "wb", buffering=0) as f, pytest.raises(OSError):  # fill the file system
            while True:
                f.write(b"\0" * 4096)
        before = tree_hashes(b)
        rc, err = run(capsys, "bank", "split", b, "--seed", "9")
        assert_refused(rc, err, "no space left on device")
        assert tree_hashes(b) == before
        Bank.open(b, verify=True)


# ---- the check record ------------------------------------------------------------------------------------------
def test_open_uses_the_record_and_rechecks_after_a_change(tmp_path, monkeypatch):
    b = good_bank(tmp_path / "b").path
    calls = []
    real = vecrag.bank.check.check_content
    monkeypatch.setattr(vecrag.bank.check, "check_content", lambda *a: calls.append(1) or real(*a))
    Bank.open(b)
    Bank.open(b)
    assert calls == []  # write_bank recorded its own check
    (b / RECORD).unlink()
    Bank.open(b)
    Bank.open(b)
    assert calls == [1]  # checked once, then recorded
    st = (b / "chunks.parquet").stat()
    (b / "chunks.parquet").write_bytes((b / "chunks.parquet").read_bytes())  # same bytes, new ctime
    Bank.open(b)
    assert calls == [1, 1]
    Bank.open(b, verify=True)
    assert calls == [1, 1, 1]  # --verify always reads everything
    assert st.st_size == (b / "chunks.parquet").stat().st_size


def test_in_place_damage_with_size_and_mtime_kept_is_found(tmp_path):
    """ctime is in the record: an edit that restores size and mtime is still noticed."""
    b = good_bank(tmp_path / "b").path
    st = (b / "vectors.npy").stat()
    v = np.load(b / "vectors.npy")
    v[11] = np.nan
    with open(b / "vectors.npy", "r+b") as f:
        np.save(f, v)
    os.utime(b / "vectors.npy", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (b / "vectors.npy").stat().st_size == st.st_size
    with pytest.raises(VecragError, match="first at row 11"):
        Bank.open(b)


def test_copied_bank_is_checked_again(tmp_path, monkeypatch):
    b = good_bank(tmp_path / "b").path
    shutil.copytree(b, tmp_path / "copy")  # the record is copied too, but the files' ctimes are new
    calls = []
    real = vecrag.bank.check.check_content
    monkeypatch.setattr(vecrag.bank.check, "check_content", lambda *a: calls.append(1) or real(*a))
    Bank.open(tmp_path / "copy")
    assert calls == [1]


def test_check_false_opens_a_damaged_bank_for_inspection(tmp_path):
    b = nan_bank(tmp_path / "nan", update_checksum=False)
    (b / "chunks.parquet").unlink()
    bank = Bank.open(b, check=False)
    assert bank.n == 720
    with pytest.raises(VecragError, match="is missing"):
        Bank.open(b)


def test_split_and_lanes_renew_the_record(tmp_path, capsys, monkeypatch):
    b = good_bank(tmp_path / "b").path
    assert run(capsys, "bank", "split", b, "--seed", "5")[0] == 0
    assert run(capsys, "bank", "lanes", b, "--lanes", "kmeans:3")[0] == 0
    monkeypatch.setattr(vecrag.bank.check, "check_content", _no_full_check)
    bank = Bank.open(b)
    assert bank.manifest["split"]["seed"] == 5 and bank.manifest["lanes"]["source"] == "kmeans"
    monkeypatch.undo()
    Bank.open(b, verify=True)


# ---- file-system failures of the other bank writers ---------------------------------------------------------
def test_merge_into_a_read_only_folder(tmp_path, capsys):
    a = good_bank(tmp_path / "a").path
    b = good_bank(tmp_path / "b", seed=1).path
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        rc, err = run(capsys, "bank", "merge", a, b, "--out", ro / "m", "--allow-duplicate-titles",
                      "--article-ids", "offset")
    assert_refused(rc, err, str(ro), "choose a location you can write to")
    assert list(ro.iterdir()) == []


def test_import_out_under_a_file_and_over_the_users_vectors(tmp_path, capsys):
    args = _import_files(tmp_path, 100, 100)
    (tmp_path / "afile").write_text("mine")
    out_at = args.index("--out") + 1
    rc, err = run(capsys, *args[:out_at], tmp_path / "afile" / "bank")
    assert_refused(rc, err, f"{tmp_path / 'afile'} is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "mine"
    own = tmp_path / "own"
    own.mkdir()
    np.save(own / "vectors.npy", np.ones((2, 2)))
    before = tree_hashes(own)
    rc, err = run(capsys, *args[:out_at], own, "--overwrite")
    assert_refused(rc, err, "no manifest.json", "vectors.npy", "--overwrite")
    assert tree_hashes(own) == before


def test_unreadable_file_is_a_permission_problem_not_damage(tmp_path, capsys, monkeypatch):
    b = good_bank(tmp_path / "b").path

    def denied(path, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(np, "load", denied)
    rc, err = run(capsys, "bank", "info", b)
    assert_refused(rc, err, str(b / "vectors.npy"), "permission denied")
    assert "damaged" not in err


def test_written_files_get_the_umask_mode_not_mkstemp_0600(tmp_path):
    """Atomic writes go through mkstemp (0600): the renamed file must get the mode a plain open() gives, so a
    bank built by one user can be read by the others the umask allows."""
    import os

    from vecrag.fsutil import _FILE_MODE, atomic_write_text

    atomic_write_text(tmp_path / "f.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~mask == _FILE_MODE
