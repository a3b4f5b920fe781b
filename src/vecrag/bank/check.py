"""The checks ``Bank.open`` runs before a bank is used, and the record that keeps them cheap.

Two levels:

- **structure** (every open, a few milliseconds): the manifest has its counts; ``vectors.npy``,
  ``chunks.parquet`` and ``articles.parquet`` exist; the vectors' header says N x D in the manifest's dtype;
  the two tables' Parquet footers say ``n_chunks`` / ``n_articles`` rows and hold the bank's columns.
- **content** (once per change of the files): every vector is finite and unit-norm (within ``NORM_TOL``,
  which fp16 storage needs); chunk ids run 0..N-1; the articles' ``first_chunk`` / ``n_chunks`` tile the
  chunks and agree with the chunks' ``article_id``; every split is train/val/test; each file's sha256 equals
  the manifest's checksum. This reads every byte of the bank (about 2 s for 600k x 384 fp16).

A passed content check is recorded in ``BANK/.verified.json`` with each data file's size, mtime and ctime
and the manifest's checksums and counts (when the bank is read-only: in ``$VECRAG_CACHE`` or
``$XDG_CACHE_HOME/vecrag`` or ``~/.cache/vecrag``, under ``verified/``). While those are unchanged the next
open skips the content check; replacing or editing a file changes its ctime (which a user cannot set back), a
copy gets new ctimes, so the bank is checked again the next time it is opened. Writers that produce a bank
whose content they built (``write_bank``, ``merge_banks``, re-split, re-lane) record it themselves.

Every failure is a ``VecragError`` naming the file, what is wrong (the first bad row where there is one) and
how to rebuild the bank.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np

from vecrag.errors import VecragError
from vecrag.fsutil import atomic_write_json, fs_error, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VECTORS = "vectors.npy"
CHUNKS = "chunks.parquet"
ARTICLES = "articles.parquet"
DATA_FILES = (VECTORS, CHUNKS, ARTICLES)
RECORD = ".verified.json"
RECORD_VERSION = 1
NORM_TOL = 1e-2  # fp16 storage rounds norms to about 1e-3
CHUNK_COLUMNS = ("chunk_id", "article_id", "position", "text", "lane")
ARTICLE_COLUMNS = ("article_id", "title", "n_chunks", "first_chunk", "lane", "split")
SPLIT_NAMES = ("train", "val", "test")
_BLOCK_ROWS = 65536


# ---- messages --------------------------------------------------------------------------------------------
def damaged_hint(path: Path, manifest: dict[str, Any]) -> str:
    """How to get a good bank back: the ingest command when the manifest knows its sources."""
    sources = (manifest.get("ingest") or {}).get("sources")
    if sources:
        redo = f"`vecrag ingest {' '.join(shlex.quote(str(s)) for s in sources)} --out {path} --overwrite`"
    else:
        redo = "`vecrag ingest ... --overwrite` (or `bank import ... --overwrite`, `bank merge ... --force`)"
    return (f"the bank is damaged: rebuild it with {redo}, or restore it from a copy; "
            f"`vecrag bank info {path} --verify` checks every file")


def _checksum_note(path: Path, name: str, manifest: dict[str, Any]) -> str:
    """' (checksum mismatch: ...)' when the file no longer has the manifest's sha256 (computed on failure only)."""
    want = (manifest.get("checksums") or {}).get(name)
    if not want:
        return ""
    try:
        if sha256_file(path / name) == want:
            return ""
    except OSError:
        return ""
    return "; checksum mismatch: the file changed or was damaged since the bank was written"


def _damaged(path: Path, name: str, manifest: dict[str, Any], what: str) -> VecragError:
    return VecragError(what + _checksum_note(path, name, manifest), path=path / name,
                       hint=damaged_hint(path, manifest))


def _unreadable(path: Path, name: str, manifest: dict[str, Any], e: Exception, what: str) -> VecragError:
    """A file we may not read is a permission problem, not damage."""
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM):
        return fs_error(e, path=path / name)
    return _damaged(path, name, manifest, f"{what} ({e})")


# ---- manifest and structure (every open) ------------------------------------------------------------------
def check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """The manifest fields every reader relies on: counts, dim, dtype, encoder."""
    problems = [k for k in ("n_chunks", "n_articles", "dim")
                if not isinstance(manifest.get(k), int) or manifest[k] < 0]
    if manifest.get("dtype") not in ("float16", "float32"):
        problems.append("dtype")
    enc = manifest.get("encoder")
    if not isinstance(enc, dict) or not isinstance(enc.get("name"), str) or enc.get("dim") != manifest.get("dim"):
        problems.append("encoder")
    if problems:
        raise VecragError(f"the manifest lacks or has bad values for {', '.join(problems)}", path=path / MANIFEST,
                          hint=damaged_hint(path, manifest))


def check_present(path: Path, manifest: dict[str, Any]) -> None:
    for name in DATA_FILES:
        if not (path / name).is_file():
            raise VecragError("this file of the bank is missing (the bank is incomplete or damaged)", path=path / name,
                              hint=damaged_hint(path, manifest))


def load_vectors(path: Path, manifest: dict[str, Any]) -> np.ndarray:
    """The memory-mapped vectors, after checking the header against the manifest."""
    try:
        vectors = np.load(path / VECTORS, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _unreadable(path, VECTORS, manifest, e, "cannot read vectors") from e
    want = (manifest["n_chunks"], manifest["dim"])
    if vectors.shape != want:
        raise _damaged(path, VECTORS, manifest, f"vectors shape {vectors.shape} disagrees with manifest "
                                                f"({want[0]} x {want[1]})")
    if str(vectors.dtype) != manifest["dtype"]:
        raise _damaged(path, VECTORS, manifest, f"vectors are {vectors.dtype}, the manifest says {manifest['dtype']}")
    return vectors


def check_table_footer(path: Path, name: str, rows: int, columns: tuple[str, ...],
                       manifest: dict[str, Any]) -> None:
    """Row count and columns from the Parquet footer (no data read)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_metadata(path / name)
    except (OSError, pa.ArrowException) as e:
        raise _unreadable(path, name, manifest, e, "cannot read the table") from e
    what = "chunks" if name == CHUNKS else "articles"
    if meta.num_rows != rows:
        raise _damaged(path, name, manifest, f"holds {meta.num_rows} rows but the manifest says {rows} {what}")
    missing = [c for c in columns if c not in meta.schema.names]
    if missing:
        raise _damaged(path, name, manifest, f"lacks the column(s) {', '.join(missing)}")


def check_structure(path: Path, manifest: dict[str, Any]) -> np.ndarray:
    """Everything that can be checked without reading the data; returns the memory-mapped vectors."""
    check_manifest(path, manifest)
    check_present(path, manifest)
    vectors = load_vectors(path, manifest)
    check_table_footer(path, CHUNKS, manifest["n_chunks"], CHUNK_COLUMNS, manifest)
    check_table_footer(path, ARTICLES, manifest["n_articles"], ARTICLE_COLUMNS, manifest)
    return vectors


# ---- content (when the record is stale) ------------------------------------------------------------------
def check_vectors(vectors: np.ndarray, *, dim: int | None = None, where: str | Path = "vectors",
                  hint: str | None = None) -> None:
    """Raise a VecragError if vectors are not a finite N x D matrix of unit rows (first bad row named)."""
    if vectors.ndim != 2:
        raise VecragError(f"vectors must be a 2-D N x D matrix, got shape {vectors.shape}", path=where,
                          hint=hint or "save one row per chunk")
    if dim is not None and vectors.shape[1] != dim:
        raise VecragError(f"vectors have dimension {vectors.shape[1]}, expected {dim}", path=where,
                          hint=hint or "use vectors from the encoder named in the manifest, or rebuild the bank")
    bad_rows = _bad_rows(vectors)
    if bad_rows is None:
        return
    kind, count, row, norm = bad_rows
    if kind == "nonfinite":
        raise VecragError(f"{count} vectors contain NaN or Inf (first at row {row})", path=where,
                          hint=hint or "re-encode those chunks or drop them before import")
    raise VecragError(f"{count} vectors are not unit-norm (row {row} has norm {norm:.4f})", path=where,
                      hint=hint or "L2-normalise the vectors (or pass --normalize to bank import)")


def _bad_rows(vectors: np.ndarray) -> tuple[str, int, int, float] | None:
    """('nonfinite' | 'norm', count, first row, its norm) over all rows, non-finite rows first; None if all good."""
    counts = {"nonfinite": 0, "norm": 0}
    first: dict[str, tuple[int, float]] = {}
    for s in range(0, vectors.shape[0], _BLOCK_ROWS):
        block = np.asarray(vectors[s:s + _BLOCK_ROWS], dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        bad = np.flatnonzero(~(np.abs(norms - 1.0) <= NORM_TOL))  # NaN compares false: caught here too
        for row, finite in zip(bad.tolist(), np.isfinite(block[bad]).all(axis=1).tolist(), strict=True):
            kind = "norm" if finite else "nonfinite"
            counts[kind] += 1
            first.setdefault(kind, (s + row, float(norms[row])))
    for kind in ("nonfinite", "norm"):
        if kind in first:
            return kind, counts[kind], first[kind][0], first[kind][1]
    return None


def _first_diff(a: np.ndarray, b: np.ndarray) -> int | None:
    diff = np.flatnonzero(a != b)
    return int(diff[0]) if len(diff) else None


def check_tables(path: Path, manifest: dict[str, Any]) -> None:
    """Chunk ids 0..N-1; articles tile the chunks in order; chunk article ids agree; splits are known."""
    import pyarrow.parquet as pq

    n = manifest["n_chunks"]
    chunks = pq.read_table(path / CHUNKS, columns=["chunk_id", "article_id"])
    arts = pq.read_table(path / ARTICLES, columns=["article_id", "n_chunks", "first_chunk", "split"])
    row = _first_diff(chunks.column("chunk_id").to_numpy(), np.arange(n))
    if row is not None:
        raise _damaged(path, CHUNKS, manifest, f"row {row} has chunk_id "
                                               f"{chunks.column('chunk_id')[row].as_py()}, expected {row}")
    counts = arts.column("n_chunks").to_numpy().astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if len(counts) else counts
    row = _first_diff(arts.column("first_chunk").to_numpy(), starts)
    if row is None and (counts < 1).any():
        row = int(np.flatnonzero(counts < 1)[0])
    if row is not None or int(counts.sum()) != n:
        where = f"article row {row}" if row is not None else f"n_chunks sums to {int(counts.sum())}, not {n}:"
        raise _damaged(path, ARTICLES, manifest, f"{where} does not tile the chunks (first_chunk / n_chunks)")
    expect = np.repeat(arts.column("article_id").to_numpy(), counts)
    row = _first_diff(chunks.column("article_id").to_numpy(), expect)
    if row is not None:
        raise _damaged(path, CHUNKS, manifest, f"row {row} belongs to article "
                                               f"{chunks.column('article_id')[row].as_py()}, but articles.parquet "
                                               f"puts it in article {int(expect[row])}")
    splits = arts.column("split").to_pylist()
    bad = [i for i, s in enumerate(splits) if s not in SPLIT_NAMES]
    if bad:
        raise _damaged(path, ARTICLES, manifest, f"article row {bad[0]} has split {splits[bad[0]]!r} "
                                                 f"(expected one of {', '.join(SPLIT_NAMES)})")


def check_checksums(path: Path, manifest: dict[str, Any]) -> None:
    for name, digest in (manifest.get("checksums") or {}).items():
        if sha256_file(path / name) != digest:
            raise VecragError("checksum mismatch: the file changed or was damaged since the bank was written",
                              path=path / name, hint=damaged_hint(path, manifest))


def check_content(path: Path, manifest: dict[str, Any], vectors: np.ndarray) -> None:
    """Read every byte: vectors finite and unit-norm, tables consistent, checksums equal the manifest's."""
    t = time.perf_counter()
    check_vectors(vectors, dim=manifest["dim"], where=path / VECTORS,
                  hint=damaged_hint(path, manifest))
    check_tables(path, manifest)
    check_checksums(path, manifest)
    secs = time.perf_counter() - t
    log.log(logging.INFO if secs > 1.0 else logging.DEBUG,
            "checked %s: %d vectors finite and unit-norm, tables consistent, checksums match (%.1f s; not repeated "
            "while its files are unchanged)", path, manifest["n_chunks"], secs)


# ---- the verification record -------------------------------------------------------------------------------
def _cache_root() -> Path:
    if os.environ.get("VECRAG_CACHE"):
        return Path(os.environ["VECRAG_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vecrag"


def record_paths(path: Path) -> list[Path]:
    """Where the record may be: in the bank, else in the user's cache (keyed by the bank's absolute path)."""
    key = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:32]
    return [path / RECORD, _cache_root() / "verified" / f"{key}.json"]


def _record_body(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    files = {}
    for name in DATA_FILES:
        st = (path / name).stat()
        files[name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return {"version": RECORD_VERSION, "checksums": manifest.get("checksums") or {}, "dtype": manifest.get("dtype"),
            "shape": [manifest.get("n_chunks"), manifest.get("n_articles"), manifest.get("dim")], "files": files}


def is_recorded(path: Path, manifest: dict[str, Any]) -> bool:
    """Whether a content check passed on exactly these files (same size, mtime, ctime, checksums, counts)."""
    try:
        body = _record_body(path, manifest)
    except OSError:
        return False
    for loc in record_paths(path):
        try:
            rec = json.loads(loc.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and {k: rec.get(k) for k in body} == body:
            return True
    return False


def record_verified(path: Path, manifest: dict[str, Any]) -> None:
    """Record that the bank's current files passed the content check (best effort: a failure costs a re-check)."""
    try:
        body = _record_body(path, manifest)
    except OSError:
        return
    body["checked"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for loc in record_paths(path):
        try:
            atomic_write_json(loc, body)
            return
        except OSError as e:
            log.debug("cannot record the bank check in %s (%s)", loc, e)
    log.info("%s: cannot record that the bank was checked (read-only, and no writable cache); it will be "
             "checked again on the next open", path)


def forget_verified(path: Path) -> None:
    """Drop the bank's own record (before its files are replaced)."""
    try:
        (path / RECORD).unlink(missing_ok=True)
    except OSError:
        pass


def open_checked(path: Path, manifest: dict[str, Any], *, full: bool = False) -> np.ndarray:
    """Structure always; content when ``full`` or when no record matches the files; returns the vectors."""
    vectors = check_structure(path, manifest)
    if full or not is_recorded(path, manifest):
        check_content(path, manifest, vectors)
        record_verified(path, manifest)
    return vectors
