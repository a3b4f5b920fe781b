"""Atomic file writes (a temp file in the same directory, fsync, rename, fsync the directory) and the one
place where an ``OSError`` becomes a user-facing message (``fs_error``)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from vecrag.errors import VecragError

_NO_SPACE = "no space left on device (the disk is full or the quota is used up)"
_NO_SPACE_HINT = ("free some space (`df -h` shows where) or choose another location, then rerun the same command: "
                  "files already written are complete and are kept")
_FS_MESSAGES: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied: this location cannot be written (or read) by you",
                   "choose a location you can write to, or change its permissions (`ls -ld` shows them)"),
    errno.EPERM: ("operation not permitted: the file or folder is protected (read-only, immutable or not yours)",
                  "choose a location you can write to; an immutable file or folder needs `chattr -i`"),
    errno.EROFS: ("the file system is mounted read-only", "choose a location on a writable file system"),
    errno.ENOENT: ("no such file or folder", "check the path; a parent folder may be missing"),
    errno.ENOTDIR: ("a part of this path is a file, not a folder",
                    "choose a path whose parent folders are folders"),
    errno.EISDIR: ("this is a folder, a file was expected", "give the path of a file"),
    errno.ENOSPC: (_NO_SPACE, _NO_SPACE_HINT),
    errno.EDQUOT: (_NO_SPACE, _NO_SPACE_HINT),
    errno.EFBIG: ("the file is larger than this file system allows", "choose another file system"),
    errno.EMFILE: ("too many open files", "raise the limit (`ulimit -n 4096`) and rerun the command"),
    errno.EIO: ("input/output error: the disk or the file system is failing",
                "check the disk (`dmesg`), copy the data elsewhere and rerun the command"),
}


def _blocking_file(path: Path) -> Path | None:
    """The first ancestor of ``path`` that exists and is not a folder (why ENOTDIR was raised)."""
    for p in reversed(path.parents):
        if p.exists() and not p.is_dir():
            return p
    return None


def fs_error(e: OSError, *, what: str | None = None, hint: str | None = None,
             path: str | Path | None = None) -> VecragError:
    """One clear VecragError for a file-system failure: the path, what went wrong (from the errno) and the fix.

    ``what`` says what was being done ("cannot write the new split into the bank"); ``hint`` replaces the
    errno's generic fix; ``path`` is used when the exception names none. A short write without an errno (numpy's
    "N requested and M written") is read as a full disk."""
    name = e.filename if e.filename is not None else path
    short_write = e.errno is None and "requested and" in str(e)
    code = errno.ENOSPC if short_write else e.errno
    text, fix = _FS_MESSAGES.get(code or -1, (e.strerror or str(e) or type(e).__name__, "check the path and rerun "
                                                                                      "the command"))
    if code == errno.ENOTDIR and name is not None and (blocker := _blocking_file(Path(name))) is not None:
        text = f"{blocker} is a file, not a folder"
    detail = e.strerror or str(e)
    if detail and detail.lower() not in text.lower():
        text = f"{text} ({detail})"
    if e.filename2 is not None:
        text = f"{text}; other path: {e.filename2}"
    return VecragError(f"{what}: {text}" if what else text, path=name, hint=hint or fix)


def fsync_path(path: str | Path) -> None:
    """fsync a file or a directory by path (raises OSError where the platform refuses)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """fsync a directory (its entries: a rename in it), best effort: some filesystems refuse."""
    with contextlib.suppress(OSError):
        fsync_path(path)


def _umask() -> int:
    mask = os.umask(0o022)  # read it: umask() only sets, so set it back at once
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temp file beside ``path``; on clean exit fsync and rename it over ``path``."""
    path = Path(path)
    with _naming(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with _naming(path):
            if hasattr(os, "fchmod"):  # mkstemp makes 0600; a written file gets the mode open() would give it
                os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, mode) as f:
                yield f  # type: ignore[misc]
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raise an OSError about a temp file (or about no file: a short write) as one about ``path``."""
    try:
        yield
    except OSError as e:
        temp = e.filename is not None and Path(e.filename).name.startswith(f".{path.name}.") \
            and Path(e.filename).name.endswith(".tmp")
        if e.filename is None or temp:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def probe_writable(folder: str | Path) -> None:
    """Create ``folder`` if needed and a temp file in it (raises the OSError a later write would raise)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
    os.close(fd)
    os.unlink(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """Non-finite floats (a median rank of inf) become strings so the file stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save_npy(path: str | Path, array: Any) -> None:
    import numpy as np

    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def atomic_write_parquet(path: str | Path, table: Any) -> None:
    import pyarrow.parquet as pq

    with atomic_open(path, "wb") as f:
        pq.write_table(table, f)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it; a torn last line is tolerated by ``read_jsonl``."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn write from a killed process
    return out
