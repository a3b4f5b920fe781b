"""The ingest rows (1-31) of the hostile-input review (docs: ../shared/reviews/hostile-input-cases.md), plus the
CLI's file-system, SIGTERM and Ctrl-C messages for ingest.

Every refusal: exit 2, one ``vecrag: error:`` paragraph with a ``fix:`` line, no traceback, the message's key
words, and nothing the user had is changed (files hashed before and after). The text encoder is replaced by
``FakeEncoder`` (deterministic hash vectors) so that these tests need no model and run in seconds; the rows
about the encoder itself (26-28) use the real loader.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import lzma
import os
import resource
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

import vecrag.bank.encode
from tests.conftest import small_tmpfs
from vecrag.bank.store import Bank, EncoderInfo
from vecrag.cli import build_parser, continue_hint, main

ROOT = Path(__file__).resolve().parents[2]
DIM = 16


class FakeEncoder:
    """Stands in for a sentence-transformers model: a unit vector seeded by the text's CRC (deterministic)."""

    def __init__(self) -> None:
        self.info = EncoderInfo("fake-hash-16", DIM)
        self.device = "cpu"

    @property
    def dim(self) -> int:
        return DIM

    def encode(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        out = np.stack([np.random.default_rng(zlib.crc32(t.encode("utf-8"))).standard_normal(DIM)
                        for t in texts]).astype(np.float32) if texts else np.zeros((0, DIM), np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True) if len(out) else out


@pytest.fixture
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> FakeEncoder:
    enc = FakeEncoder()
    monkeypatch.setattr(vecrag.bank.encode, "load_encoder", lambda *a, **k: enc)
    return enc


# ---- helpers ---------------------------------------------------------------------------------------------
def article(i: int, sentences: int = 6) -> dict:
    words = ["river", "castle", "engine", "violin", "harbour", "comet", "orchard", "glacier", "lantern", "meadow"]
    text = " ".join(f"Sentence {j} of article {i} is about the {words[(i + j) % len(words)]} number {i * 31 + j}."
                    for j in range(sentences))
    return {"id": 100 + i, "title": f"Title {i}", "text": text}


def write_jsonl(path: Path, n: int = 5, sentences: int = 6) -> Path:
    path.write_text("".join(json.dumps(article(i, sentences)) + "\n" for i in range(n)), encoding="utf-8")
    return path


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (or of ``root`` itself), by relative path."""
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".verified.json"}


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable: ``chattr +i`` as root (root ignores permission bits), else ``chmod a-w``;
    skip the test where neither stops a write."""
    if os.geteuid() == 0:
        try:
            ok = subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0
        except FileNotFoundError:
            ok = False
        if not ok:
            pytest.skip("running as root and `chattr +i` does not work here")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=False)
        return
    mode = path.stat().st_mode
    path.chmod(mode & ~0o222)
    try:
        if os.access(path, os.W_OK):
            pytest.skip("chmod a-w does not stop writes here")
        yield
    finally:
        path.chmod(mode)


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def assert_refused(rc: int, err: str, *words: str) -> None:
    """Exit 2, one error paragraph with a fix, no traceback, the key words."""
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.count("vecrag: error:") == 1 and "fix:" in err, err
    for w in words:
        assert w.lower() in err.lower(), (w, err)


def ingest_args(src: Path | str, out: Path, *extra: str) -> list[str]:
    return ["ingest", str(src), "--out", str(out), "--quiet", "--batch-chunks", "4", *extra]


def clean_bank(tmp_path: Path, src: Path, *extra: str) -> Bank:
    """The reference: the same corpus ingested without interference."""
    out = tmp_path / "reference"
    assert main(ingest_args(src, out, *extra)) == 0
    return Bank.open(out, verify=True)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "five.jsonl")


# ---- 1-15: unreadable or wrong input --------------------------------------------------------------------
def test_01_empty_file(tmp_path, capsys, fake_encoder):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    rc, err = run(capsys, *ingest_args(tmp_path / "empty.jsonl", tmp_path / "out"))
    assert_refused(rc, err, "empty.jsonl", "empty")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,size", [("ls_full", None), ("ls.bin", 100_000)])
def test_02_03_executable(tmp_path, capsys, fake_encoder, name, size):
    data = Path("/bin/ls").read_bytes() if Path("/bin/ls").exists() else b"\x7fELF" + bytes(range(256)) * 400
    (tmp_path / name).write_bytes(data[:size] if size else data)
    rc, err = run(capsys, *ingest_args(tmp_path / name, tmp_path / "out"))
    assert_refused(rc, err, name, "executable")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,line", [("latin1.jsonl", 2), ("latin1.txt", 1)])
def test_04_05_not_utf8_leaves_no_empty_folder(tmp_path, capsys, fake_encoder, name, line):
    good = json.dumps(article(0)) + "\n"
    bad = '{"title": "Caf\xe9", "text": "Le caf\xe9 est tr\xe8s bon."}\n'
    (tmp_path / name).write_bytes(((good if name.endswith(".jsonl") else "") + bad).encode("latin-1"))
    rc, err = run(capsys, *ingest_args(tmp_path / name, tmp_path / "out"))
    assert_refused(rc, err, name, f"line {line} is not valid UTF-8", "iconv")
    assert not (tmp_path / "out").exists()  # the review's note: an empty folder was left behind


def test_06_truncated_xz(tmp_path, capsys, fake_encoder):
    data = lzma.compress(write_jsonl(tmp_path / "src.jsonl", n=200).read_bytes())
    (tmp_path / "trunc.jsonl.xz").write_bytes(data[: len(data) // 2])
    rc, err = run(capsys, *ingest_args(tmp_path / "trunc.jsonl.xz", tmp_path / "out"))
    assert_refused(rc, err, "trunc.jsonl.xz", "truncated or corrupt", "xz -t")


def _badmid(tmp_path: Path) -> Path:
    lines = [json.dumps(article(i)) for i in range(4)]
    lines[2] = '{"title": "broken", "text": "no closing brace"'
    (tmp_path / "badmid.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "badmid.jsonl"


def test_07_bad_json_line(tmp_path, capsys, fake_encoder):
    rc, err = run(capsys, *ingest_args(_badmid(tmp_path), tmp_path / "out"))
    assert_refused(rc, err, "badmid.jsonl", "line 3", "not valid JSON", "--skip-bad-lines")


def test_08_bad_json_line_skipped(tmp_path, capsys, fake_encoder):
    rc, err = run(capsys, *ingest_args(_badmid(tmp_path), tmp_path / "out", "--skip-bad-lines"))
    assert rc == 0, err
    bank = Bank.open(tmp_path / "out", verify=True)
    assert bank.manifest["n_articles"] == 3 and bank.manifest["ingest"]["bad_lines_skipped"] == 1


def test_09_objects_without_text(tmp_path, capsys, fake_encoder):
    (tmp_path / "notext.jsonl").write_text('{"id": 1, "title": "A", "url": "u"}\n')
    rc, err = run(capsys, *ingest_args(tmp_path / "notext.jsonl", tmp_path / "out"))
    assert_refused(rc, err, "notext.jsonl", 'no "text" field', "'url'")


def _limit_memory(gib: float) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (int(gib * 2**30), int(gib * 2**30)))


def test_10_huge_junk_field_under_a_memory_limit(tmp_path):
    """A 10 MB junk field beside a short text: one small bank, in a process capped at 6 GiB of address space."""
    rec = {"id": 1, "title": "Junk", "junk": "x" * 10_000_000, "text": article(1)["text"]}
    (tmp_path / "hugejunk.jsonl").write_text(json.dumps(rec) + "\n")
    proc = _fake_encoder_cli(tmp_path, ingest_args(tmp_path / "hugejunk.jsonl", tmp_path / "out"),
                             preexec_fn=lambda: _limit_memory(6))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert Bank.open(tmp_path / "out").manifest["n_articles"] == 1


def test_12_folder_with_an_executable(tmp_path, capsys, fake_encoder):
    d = tmp_path / "mixed"
    d.mkdir()
    write_jsonl(d / "a.jsonl")
    (d / "b.bin").write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    (d / "c.txt").write_text("Plain prose. Two sentences.\n")
    rc, err = run(capsys, *ingest_args(d, tmp_path / "out"))
    assert_refused(rc, err, "b.bin", "executable")


def test_13_14_unknown_format_then_rerun_with_other_sources(tmp_path, capsys, fake_encoder):
    d = tmp_path / "mixed2"
    d.mkdir()
    write_jsonl(d / "a.jsonl")
    (d / "c.txt").write_text("Plain prose. Two sentences.\n")
    (d / "d.csv").write_text("a,b\n1,2\n")
    out = tmp_path / "out"
    rc, err = run(capsys, *ingest_args(d, out, "--batch-chunks", "1"))
    assert_refused(rc, err, "d.csv", "cannot tell the corpus format", "--format")
    staged = tree_hashes(out / ".ingest")
    (d / "d.csv").unlink()
    rc, err = run(capsys, *ingest_args(d, out, "--batch-chunks", "1"))
    assert_refused(rc, err, "different settings", "--restart")
    assert tree_hashes(out / ".ingest") == staged


def test_15_missing_source(tmp_path, capsys, fake_encoder):
    rc, err = run(capsys, *ingest_args(tmp_path / "nope.jsonl", tmp_path / "out"))
    assert_refused(rc, err, "nope.jsonl", "no such file or folder")


# ---- 16-23: the output location ----------------------------------------------------------------------------
@pytest.mark.parametrize("files,extra,words", [
    ({"notes.txt": b"mine"}, [], ["not a vecrag bank", "notes.txt"]),                           # 16
    ({"vectors.npy": b"\x93NUMPY my own"}, [], ["no manifest.json", "vectors.npy"]),              # 18
    ({"notes.txt": b"mine", "vectors.npy": b"\x93NUMPY own"}, ["--overwrite"],                   # 19
     ["not a vecrag bank", "--overwrite", "vectors.npy"]),
    ({"vectors.npy": b"\x93NUMPY own", "chunks.parquet": b"PAR1"}, ["--overwrite"], ["no manifest.json"]),
])
def test_16_18_19_out_holds_the_users_files(tmp_path, capsys, corpus, fake_encoder, files, extra, words):
    out = tmp_path / "nonbank"
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    before = tree_hashes(out)
    rc, err = run(capsys, *ingest_args(corpus, out, *extra))
    assert_refused(rc, err, str(out), *words)
    assert tree_hashes(out) == before and sorted(p.name for p in out.iterdir()) == sorted(files)


def test_17_complete_bank_needs_overwrite_and_overwrite_replaces_it(tmp_path, capsys, corpus, fake_encoder):
    out = tmp_path / "complete"
    assert main(ingest_args(corpus, out)) == 0
    before = tree_hashes(out)
    rc, err = run(capsys, *ingest_args(corpus, out, "--max-articles", "2"))
    assert_refused(rc, err, "already holds a complete bank", "--overwrite")
    assert tree_hashes(out) == before
    rc, err = run(capsys, *ingest_args(corpus, out, "--max-articles", "2", "--overwrite"))
    assert rc == 0, err
    assert Bank.open(out, verify=True).manifest["n_articles"] == 2


def test_20_read_only_output_location(tmp_path, capsys, corpus, fake_encoder):
    ro = tmp_path / "rodir"
    ro.mkdir()
    with read_only(ro):
        rc, err = run(capsys, *ingest_args(corpus, ro / "bank"))
    assert_refused(rc, err, str(ro / "bank"), "--out")
    assert any(w in err for w in ("not permitted", "permission denied", "read-only"))
    assert list(ro.iterdir()) == []


def test_21_parent_is_a_file(tmp_path, capsys, corpus, fake_encoder):
    before = tree_hashes(corpus)
    rc, err = run(capsys, *ingest_args(corpus, corpus / "bank"))
    assert_refused(rc, err, f"{corpus} is a file, not a folder", "parent folders")
    assert tree_hashes(corpus) == before


def test_22_out_is_a_file(tmp_path, capsys, corpus, fake_encoder):
    before = tree_hashes(corpus)
    rc, err = run(capsys, *ingest_args(corpus, corpus))
    assert_refused(rc, err, "--out exists and is not a directory")
    assert tree_hashes(corpus) == before


def test_23_disk_full_keeps_committed_batches_and_rerun_finishes(tmp_path, capsys, corpus, fake_encoder,
                                                                  monkeypatch):
    """ENOSPC on the third batch: a clear message; the two committed batches kept; the rerun after space was
    freed gives the bank an uninterrupted ingest gives."""
    import vecrag.bank.ingest

    ref = clean_bank(tmp_path, corpus)
    real = vecrag.bank.ingest.atomic_save_npy
    calls = []

    def full_on_third(path: Path, array: np.ndarray) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, array)

    monkeypatch.setattr(vecrag.bank.ingest, "atomic_save_npy", full_on_third)
    out = tmp_path / "out"
    rc, err = run(capsys, *ingest_args(corpus, out))
    assert_refused(rc, err, "no space left on device", "2 committed batches are kept", "rerun the same command")
    assert len(json.loads((out / ".ingest" / "progress.json").read_text())["batches"]) == 2
    monkeypatch.setattr(vecrag.bank.ingest, "atomic_save_npy", real)
    rc, err = run(capsys, *ingest_args(corpus, out))
    assert rc == 0, err
    assert Bank.open(out, verify=True).manifest["checksums"] == ref.manifest["checksums"]


def test_23_disk_full_on_a_small_tmpfs(tmp_path, capsys, fake_encoder):
    """The review's setup: a 300 KB tmpfs; then the file system is enlarged and the same command finishes."""
    with small_tmpfs(tmp_path / "small", "300k") as mnt:
        rng = np.random.default_rng(0)
        words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=8)) for _ in range(3000)]
        rows = [{"id": i, "title": f"T{i}", "text": " ".join(f"{' '.join(rng.choice(words, size=12))}."
                                                             for _ in range(40))} for i in range(30)]
        src = tmp_path / "big.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
        ref = clean_bank(tmp_path, src, "--batch-chunks", "16")
        out = mnt / "bank"
        rc, err = run(capsys, *ingest_args(src, out, "--batch-chunks", "16"))
        assert_refused(rc, err, "no space left on device", "rerun the same command")
        subprocess.run(["mount", "-o", "remount,size=20m", str(mnt)], check=True)
        rc, err = run(capsys, *ingest_args(src, out, "--batch-chunks", "16"))
        assert rc == 0, err
        assert Bank.open(out, verify=True).manifest["checksums"] == ref.manifest["checksums"]


# ---- 24-31: options, encoders, kills, formats -----------------------------------------------------------
@pytest.mark.parametrize("n", ["0", "-3"])
def test_24_25_max_articles_not_positive(tmp_path, capsys, corpus, fake_encoder, n):
    rc, err = run(capsys, *ingest_args(corpus, tmp_path / "out", "--max-articles", n))
    assert_refused(rc, err, "must be positive")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("encoder,words", [
    ("sentence-transformers/no-such-model-xyz", ["cannot load encoder", "no-such-model-xyz"]),   # 26
    ("{tmp}/nonexistent_model_dir", ["nonexistent_model_dir"]),                                  # 27
    ("{tmp}/fake_model", ["fake_model"]),                                                        # 28
])
def test_26_27_28_bad_encoders(tmp_path, capsys, corpus, encoder, words):
    (tmp_path / "fake_model").mkdir()
    (tmp_path / "fake_model" / "config.json").write_text('{"hello": "world"}')
    rc, err = run(capsys, *ingest_args(corpus, tmp_path / "out", "--encoder", encoder.format(tmp=tmp_path)))
    assert_refused(rc, err, *words)
    assert not (tmp_path / "out" / ".ingest").exists()


SLOW_ENCODER_MAIN = """
import pathlib, sys, time
import vecrag.bank.encode
from tests.bank.test_hostile_ingest import FakeEncoder

class Slow(FakeEncoder):
    def encode(self, texts, batch_size=32, progress=False):
        pathlib.Path(sys.argv[1]).open("a").write("x")
        time.sleep(float(sys.argv[2]))
        return super().encode(texts)

vecrag.bank.encode.load_encoder = lambda *a, **k: Slow()
from vecrag.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _fake_encoder_cli(tmp_path: Path, args: list[str], *, delay: float = 0.0, **kw) -> subprocess.Popen:
    """`vecrag ARGS` in a fresh process whose encoder is FakeEncoder (sleeping ``delay`` s per batch)."""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{ROOT}")
    return subprocess.Popen([sys.executable, "-c", SLOW_ENCODER_MAIN, str(tmp_path / "encoded.marker"), str(delay),
                             *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def _stop_after_batches(tmp_path: Path, proc: subprocess.Popen, sig: int, batches: int = 2) -> str:
    marker = tmp_path / "encoded.marker"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if marker.exists() and len(marker.read_text()) >= batches + 1:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return err


@pytest.mark.parametrize("sig,code,words", [
    (signal.SIGKILL, -signal.SIGKILL, []),                                                      # 29
    (signal.SIGTERM, -signal.SIGTERM, ["stopped by SIGTERM", "rerun the same command"]),       # 76 for ingest
    (signal.SIGINT, 130, ["interrupted", "rerun the same command"]),                           # 11 / 77
])
def test_29_killed_ingest_says_how_to_continue_and_rerun_is_identical(tmp_path, capsys, fake_encoder, sig, code,
                                                                      words):
    src = write_jsonl(tmp_path / "ten.jsonl", n=10)
    ref = clean_bank(tmp_path, src)
    out = tmp_path / "out"
    proc = _fake_encoder_cli(tmp_path, ingest_args(src, out), delay=0.3)
    err = _stop_after_batches(tmp_path, proc, sig)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
    if words:
        assert len([ln for ln in err.splitlines() if ln.startswith("vecrag:")]) == 1, err
    assert not (out / "manifest.json").exists()
    rc, err = run(capsys, *ingest_args(src, out))
    assert rc == 0, err
    assert Bank.open(out, verify=True).manifest["checksums"] == ref.manifest["checksums"]


def test_30_jsonl_forced_as_wikitext(tmp_path, capsys, corpus, fake_encoder):
    rc, err = run(capsys, *ingest_args(corpus, tmp_path / "out", "--format", "wikitext"))
    assert_refused(rc, err, str(corpus), "--format wikitext", "looks like jsonl", "--format jsonl")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("forced,content,looks", [
    ("jsonl", " \n = Homarus gammarus = \n \n Homarus gammarus is a lobster .\n", "wikitext"),    # 31
    ("txt", '{"title": "A", "text": "B."}\n', "jsonl"),
    ("wikitext", "<doc id=\"1\" title=\"A\">\nA\n\nText.\n</doc>\n", "wikiextractor"),
    ("jsonl", "<?xml version=\"1.0\"?>\n<mediawiki>\n", "mediawiki"),
])
def test_31_other_forced_format_mismatches(tmp_path, capsys, fake_encoder, forced, content, looks):
    src = tmp_path / "corpus.dat"
    src.write_text(content)
    rc, err = run(capsys, *ingest_args(src, tmp_path / "out", "--format", forced))
    assert_refused(rc, err, f"--format {forced}", f"looks like {looks}")


def test_forced_format_that_matches_still_works(tmp_path, capsys, corpus, fake_encoder):
    rc, err = run(capsys, *ingest_args(corpus, tmp_path / "out", "--format", "jsonl"))
    assert rc == 0, err


# ---- the CLI's messages ------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,words", [
    (["ingest", "a.jsonl", "--out", "b"], ["rerun the same command"]),
    (["train", "retriever", "BANK", "--config", "retriever-tiny", "--out", "runs/r1"],
     ["vecrag train retriever --resume runs/r1", "refused"]),
    (["train", "lvm", "--resume", "runs/l1"], ["vecrag train lvm --resume runs/l1"]),
    (["index", "BANK"], ["rerun the command"]),
    (["bank", "merge", "A", "B", "--out", "C"], ["no half-written bank"]),
])
def test_interrupt_message_says_how_to_continue_per_command(argv, words):
    hint = continue_hint(build_parser().parse_args(argv))
    for w in words:
        assert w in hint, hint


@pytest.mark.parametrize("sig,code,words", [
    (signal.SIGTERM, -signal.SIGTERM, ["vecrag: stopped by SIGTERM", "vecrag train retriever --resume"]),   # 76
    (signal.SIGINT, 130, ["vecrag: interrupted", "vecrag train retriever --resume"]),                     # 77
])
def test_76_77_stopped_training_says_resume(tmp_path, sig, code, words):
    """A training run stopped by SIGTERM or Ctrl-C names `--resume RUN`, the only way to continue it."""
    from tests.conftest import make_synthetic_bank

    bank = make_synthetic_bank(tmp_path / "bank").path
    run_dir = tmp_path / "runs" / "r1"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, "-m", "vecrag.cli", "train", "retriever", str(bank), "--config",
                             "retriever-tiny", "train.epochs=1000", "--out", str(run_dir), "--quiet"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None and not list(run_dir.glob("checkpoints/*.pt")):
        time.sleep(0.1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    last = [ln for ln in err.splitlines() if ln.startswith("vecrag:")]
    assert len(last) == 1 and all(w in last[0] for w in words), err
    assert str(run_dir) in last[0]


@pytest.mark.parametrize("exc,words", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/x"), ["/data/x", "permission denied"]),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/f"), ["/mnt/ro/f", "read-only"]),
    (OSError(errno.ENOSPC, "No space left on device", "/d/f"), ["/d/f", "no space left", "rerun the same command"]),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/d/q"), ["/d/q", "quota"]),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/nope/f"), ["/nope/f", "no such file"]),
    (OSError("66432 requested and 59328 written"), ["no space left", "66432 requested"]),
    (OSError(errno.EIO, "Input/output error", "/d/io"), ["/d/io", "input/output error"]),
])
def test_any_file_system_error_is_one_paragraph(capsys, monkeypatch, exc, words):
    """The CLI's last line of defence: an OSError from any command becomes a message with the path and a fix."""
    import vecrag.commands.index as cmd

    def boom(args):
        raise exc

    monkeypatch.setattr(cmd, "run", boom)
    rc, err = run(capsys, "index", "BANK")
    assert_refused(rc, err, *words)


def test_broken_pipe_is_quiet(capsys, monkeypatch):
    import vecrag.commands.index as cmd

    def boom(args):
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(cmd, "run", boom)
    monkeypatch.setattr(os, "dup2", lambda *a: None)  # keep pytest's stdout
    rc, err = run(capsys, "index", "BANK")
    assert rc == 141 and err == ""
