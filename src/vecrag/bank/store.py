"""The bank directory: chunk vectors (memory-mapped .npy), chunk and article tables (Parquet), a manifest.

Layout::

    BANK/
      manifest.json      format version, encoder, dtype, counts, chunker, split, lanes, checksums
      vectors.npy        N x D unit vectors (float16 or float32); row i is chunk id i
      chunks.parquet     chunk_id, article_id, position, text, lane
      articles.parquet   article_id, title, n_chunks, first_chunk, lane, split
      index/             FAISS index files (see vecrag.index.search)
      .verified.json     the files' size/mtime/ctime when they last passed the full check (see vecrag.bank.check)

Chunk ids are dense 0..N-1 and equal row numbers; an article's chunks are contiguous and in order, so
article ``a`` holds rows ``first_chunk[a] .. first_chunk[a] + n_chunks[a] - 1``.

``Bank.open`` checks the bank before handing it out (``vecrag.bank.check``): files present, shapes and table
row counts as the manifest says on every open; vectors finite and unit-norm, tables consistent and checksums
equal once per change of the files. A damaged bank is a VecragError naming the file and the first bad row.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vecrag.bank.check import (  # noqa: F401  (re-exported: the bank's file names and vector check live there)
    ARTICLES,
    CHUNKS,
    MANIFEST,
    NORM_TOL,
    VECTORS,
    check_manifest,
    check_structure,
    check_vectors,
    forget_verified,
    load_vectors,
    open_checked,
    record_verified,
)
from vecrag.bank.check import check_content as _check_content
from vecrag.errors import VecragError
from vecrag.fsutil import atomic_save_npy, atomic_write_json, atomic_write_parquet, sha256_file

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class EncoderInfo:
    name: str
    dim: int
    pooling: str = "mean"
    normalize: bool = True
    max_seq_length: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "pooling": self.pooling, "normalize": self.normalize,
                "max_seq_length": self.max_seq_length}


def split_of(article_ids: np.ndarray, seed: int, ratios: tuple[float, float, float]) -> np.ndarray:
    """Deterministic article-level split: a hash of (seed, article id) mapped to [0, 1) against the ratios.

    Adding or removing other articles never moves an article between splits.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise VecragError(f"split ratios must be three non-negative numbers summing to 1, got {ratios}",
                          hint="e.g. --split 0.9,0.05,0.05")
    with np.errstate(over="ignore"):  # wrap-around multiplication is the hash (numpy warns on scalar overflow)
        salt = np.uint64(seed) * np.uint64(0xBF58476D1CE4E5B9)
        x = np.asarray(article_ids).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + salt
        x ^= x >> np.uint64(31)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(29)
    u = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    out = np.full(len(article_ids), "train", dtype=object)
    out[u >= ratios[0]] = "val"
    out[u >= ratios[0] + ratios[1]] = "test"
    return out


def write_bank(path: str | Path, vectors: np.ndarray, *, article_ids: np.ndarray, positions: np.ndarray,
               texts: list[str], titles: dict[int, str] | list[str], chunk_lanes: list[str] | None = None,
               encoder: EncoderInfo, dtype: str = "float16", split_seed: int = 0,
               split_ratios: tuple[float, float, float] = (0.9, 0.05, 0.05),
               extra: dict[str, Any] | None = None) -> Bank:
    """Write a complete bank atomically file by file; the manifest is written last (its presence = complete).

    ``article_ids`` must be non-decreasing in first appearance order (an article's chunks contiguous);
    ``titles`` maps article id -> title (or is a list indexed by the article's order of appearance).
    """
    path = Path(path)
    n = len(texts)
    if vectors.shape[0] != n or len(article_ids) != n or len(positions) != n:
        raise VecragError(f"bank parts disagree: {vectors.shape[0]} vectors, {len(article_ids)} article ids, "
                          f"{len(positions)} positions, {n} texts", path=path)
    if dtype not in ("float16", "float32"):
        raise VecragError(f"dtype must be float16 or float32, got {dtype!r}", hint="--dtype float16")
    check_vectors(vectors, dim=encoder.dim, where=path / VECTORS)
    article_ids = np.asarray(article_ids, dtype=np.int64)
    # articles in order of first appearance; each must be contiguous
    change = np.flatnonzero(np.diff(article_ids)) + 1
    starts = np.concatenate([[0], change]).astype(np.int64) if n else np.zeros(0, np.int64)
    art = article_ids[starts] if n else np.zeros(0, np.int64)
    if len(np.unique(art)) != len(art):
        raise VecragError("an article's chunks are not contiguous in the bank", path=path,
                          hint="sort chunks by (article order, position) before import")
    counts = np.diff(np.concatenate([starts, [n]])).astype(np.int64)
    chunk_lanes = list(chunk_lanes) if chunk_lanes is not None else [""] * n
    art_lanes = [chunk_lanes[s] for s in starts]
    if isinstance(titles, dict):
        title_list = [str(titles.get(int(a), "")) for a in art]
    else:
        title_list = [str(t) for t in titles]
        if len(title_list) != len(art):
            raise VecragError(f"{len(title_list)} titles for {len(art)} articles", path=path)
    splits = split_of(art, split_seed, split_ratios)

    path.mkdir(parents=True, exist_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)  # incomplete until the manifest is back
    forget_verified(path)
    atomic_save_npy(path / VECTORS, np.ascontiguousarray(vectors, dtype=np.dtype(dtype)))
    chunks = pa.table({
        "chunk_id": pa.array(np.arange(n, dtype=np.int64)),
        "article_id": pa.array(article_ids),
        "position": pa.array(np.asarray(positions, dtype=np.int32)),
        "text": pa.array(texts, type=pa.string()),
        "lane": pa.array(chunk_lanes, type=pa.string()),
    })
    atomic_write_parquet(path / CHUNKS, chunks)
    articles = pa.table({
        "article_id": pa.array(art), "title": pa.array(title_list, type=pa.string()),
        "n_chunks": pa.array(counts), "first_chunk": pa.array(starts),
        "lane": pa.array(art_lanes, type=pa.string()), "split": pa.array(list(splits), type=pa.string()),
    })
    atomic_write_parquet(path / ARTICLES, articles)
    manifest = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "encoder": encoder.as_dict(),
        "dtype": dtype,
        "n_chunks": int(n), "n_articles": int(len(art)), "dim": int(encoder.dim),
        "split": {"seed": int(split_seed), "ratios": list(split_ratios)},
        "checksums": {f: sha256_file(path / f) for f in (VECTORS, CHUNKS, ARTICLES)},
    }
    manifest.update(extra or {})
    atomic_write_json(path / MANIFEST, manifest)
    record_verified(path, manifest)  # checked above and built here: the first open need not read it all again
    return Bank.open(path)


def read_manifest(path: Path) -> dict[str, Any]:
    """The bank's manifest, or a VecragError saying why the directory is not a (complete) bank."""
    mpath = path / MANIFEST
    if not path.is_dir():
        raise VecragError("no such bank directory", path=path,
                          hint="build one with `vecrag ingest SOURCE --out BANK`")
    if not mpath.exists():
        hint = ("an ingest was interrupted: run the same `vecrag ingest` command again to finish it"
                if (path / ".ingest").exists() else "this is not a vecrag bank; build one with `vecrag ingest`")
        raise VecragError("bank has no manifest.json (incomplete or not a bank)", path=path, hint=hint)
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VecragError(f"manifest is not valid JSON ({e})", path=mpath, hint="rebuild the bank") from e
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise VecragError(f"bank format {version} is not supported (this vecrag reads {FORMAT_VERSION})",
                          path=mpath, hint="rebuild the bank with this version")
    return manifest


def check_structure_light(path: Path, manifest: dict[str, Any]) -> np.ndarray:
    """Only what opening needs: the manifest's counts and readable vectors of that shape."""
    check_manifest(path, manifest)
    if not (path / VECTORS).is_file():
        raise VecragError("this file of the bank is missing", path=path / VECTORS, hint="rebuild the bank")
    return load_vectors(path, manifest)


class Bank:
    """A read-only view of a bank directory. Vectors are memory-mapped; tables load on first use."""

    def __init__(self, path: Path, manifest: dict[str, Any], vectors: np.ndarray):
        self.path = path
        self.manifest = manifest
        self.vectors = vectors

    @classmethod
    def open(cls, path: str | Path, *, check: bool = True, verify: bool = False) -> Bank:
        """Open the bank at ``path`` after checking it (see ``vecrag.bank.check``).

        ``check`` (default): files present, shapes and table row counts as the manifest says, and, unless a
        record says these exact files passed before, every vector finite and unit-norm, tables consistent and
        checksums equal. ``verify``: the full check even when a record exists. ``check=False``: only the
        manifest and the vectors' shape (to inspect a damaged bank)."""
        path = Path(path)
        manifest = read_manifest(path)
        if check or verify:
            vectors = open_checked(path, manifest, full=verify)
        else:
            vectors = check_structure_light(path, manifest)
        return cls(path, manifest, vectors)

    # ---- identity -------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def encoder(self) -> dict[str, Any]:
        return self.manifest["encoder"]

    def check_encoder(self, name: str, dim: int, *, where: str | Path | None = None) -> None:
        """Refuse vectors/models from another encoder than the bank's."""
        enc = self.encoder
        if enc["name"] != name or int(enc["dim"]) != int(dim):
            raise VecragError(f"encoder mismatch: bank was built with {enc['name']} ({enc['dim']}-D), "
                              f"this uses {name} ({dim}-D)", path=where or self.path / MANIFEST,
                              hint="use the bank's encoder (see `vecrag bank info`) or rebuild the bank")

    def verify(self) -> None:
        """Every check (vectors finite and unit-norm, tables consistent, checksums), ignoring any record."""
        _check_content(self.path, self.manifest, check_structure(self.path, self.manifest))
        record_verified(self.path, self.manifest)

    # ---- tables -------------------------------------------------------------------------------------
    @cached_property
    def chunks(self) -> pa.Table:
        return pq.read_table(self.path / CHUNKS)

    @cached_property
    def articles(self) -> pa.Table:
        return pq.read_table(self.path / ARTICLES)

    @cached_property
    def article_of(self) -> np.ndarray:
        """Article id of every chunk (int64, length N)."""
        return self.chunks.column("article_id").to_numpy()

    @cached_property
    def position_of(self) -> np.ndarray:
        return self.chunks.column("position").to_numpy()

    @cached_property
    def texts(self) -> list[str]:
        return self.chunks.column("text").to_pylist()

    @cached_property
    def lanes(self) -> np.ndarray:
        """Lane name of every chunk (object array; '' when the bank has no lanes)."""
        return np.asarray(self.chunks.column("lane").to_pylist(), dtype=object)

    @cached_property
    def article_start(self) -> np.ndarray:
        """First chunk id of each chunk's article (int64, length N)."""
        starts = self.articles.column("first_chunk").to_numpy()
        counts = self.articles.column("n_chunks").to_numpy()
        return np.repeat(starts, counts)

    @cached_property
    def text_group(self) -> np.ndarray:
        """Chunks with byte-identical text share a group id (for the 'same text counts as a hit' rule)."""
        import pyarrow.compute as pc

        enc = pc.dictionary_encode(self.chunks.column("text")).combine_chunks()
        return enc.indices.to_numpy().astype(np.int64)

    def split_articles(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise VecragError(f"unknown split {split!r}", hint=f"choose one of {', '.join(SPLITS)}")
        t = self.articles
        mask = np.asarray(t.column("split").to_pylist()) == split
        return t.column("article_id").to_numpy()[mask]

    def title_of(self, article_id: int) -> str:
        t = self.articles
        ids = t.column("article_id").to_numpy()
        idx = np.flatnonzero(ids == article_id)
        return t.column("title")[int(idx[0])].as_py() if len(idx) else ""

    def vectors_f32(self, ids: np.ndarray | None = None) -> np.ndarray:
        v = self.vectors if ids is None else self.vectors[np.asarray(ids)]
        return np.asarray(v, dtype=np.float32)

    def info(self) -> dict[str, Any]:
        m = self.manifest
        splits = self.articles.column("split").to_pylist()
        lanes = self.articles.column("lane").to_pylist()
        hist: dict[str, int] = {}
        for lane in lanes:
            hist[lane or "(none)"] = hist.get(lane or "(none)", 0) + 1
        counts = self.articles.column("n_chunks").to_numpy()
        return {
            "path": str(self.path), "n_chunks": self.n, "n_articles": int(m["n_articles"]), "dim": self.dim,
            "dtype": m["dtype"], "encoder": m["encoder"], "chunker": m.get("chunker"),
            "split": {**m.get("split", {}), "articles": {s: splits.count(s) for s in SPLITS}},
            "chunks_per_article": {"mean": float(counts.mean()) if len(counts) else 0.0,
                                   "max": int(counts.max()) if len(counts) else 0},
            "lanes": dict(sorted(hist.items(), key=lambda kv: -kv[1])),
            "index": m.get("index"), "size_mb": round(sum(f.stat().st_size for f in self.path.rglob("*")
                                                          if f.is_file()) / 2**20, 2),
        }

    def update_manifest(self, **fields: Any) -> None:
        manifest = {**self.manifest, **fields}
        atomic_write_json(self.path / MANIFEST, manifest)
        self.manifest = manifest

    def _replace_tables(self, tables: dict[str, pa.Table], **fields: Any) -> None:
        """Rewrite ``tables`` (file name -> table), then the manifest (their checksums and ``fields``).

        Each file is replaced atomically; if a later step fails (disk full, read-only), the old tables are put
        back from hard links taken first, so the bank stays as it was. Then the check record is renewed (the
        rest of the bank was checked when it was opened; the new tables are built here)."""
        saved: dict[str, Path] = {}
        for name in tables:
            link = self.path / f".{name}.before-{os.getpid()}"
            with contextlib.suppress(OSError):  # no hard links here: no way back, as before
                link.unlink(missing_ok=True)
                os.link(self.path / name, link)
                saved[name] = link
        try:
            for name, table in tables.items():
                atomic_write_parquet(self.path / name, table)
            sums = {**self.manifest.get("checksums", {}), **{n: sha256_file(self.path / n) for n in tables}}
            self.update_manifest(checksums=sums, **fields)
        except BaseException:
            for name, link in saved.items():
                with contextlib.suppress(OSError):
                    os.replace(link, self.path / name)
            raise
        finally:
            for link in saved.values():
                with contextlib.suppress(OSError):
                    link.unlink(missing_ok=True)
            for key in ("chunks", "articles", "lanes", "article_of", "position_of", "texts", "article_start",
                        "text_group"):
                self.__dict__.pop(key, None)
        record_verified(self.path, self.manifest)

    def resplit(self, seed: int, ratios: tuple[float, float, float]) -> None:
        """Recompute the article split with a new seed/ratios (rewrites articles.parquet)."""
        t = self.articles
        splits = split_of(t.column("article_id").to_numpy(), seed, ratios)
        t = t.set_column(t.schema.get_field_index("split"), "split", pa.array(list(splits), type=pa.string()))
        self._replace_tables({ARTICLES: t}, split={"seed": int(seed), "ratios": list(ratios)})

    def set_lanes(self, article_lanes: list[str], meta: dict[str, Any] | None = None) -> None:
        """Replace every article's lane (and its chunks'); rewrites both tables atomically file by file and
        the manifest's ``lanes`` record and checksums last (the old tables come back if a step fails). Used by
        ``vecrag bank lanes``."""
        t = self.articles
        if len(article_lanes) != t.num_rows:
            raise VecragError(f"{len(article_lanes)} lanes for {t.num_rows} articles", path=self.path)
        lanes = [str(x) for x in article_lanes]
        chunk_lanes = np.repeat(np.asarray(lanes, dtype=object), t.column("n_chunks").to_numpy()).tolist()
        c = self.chunks
        c = c.set_column(c.schema.get_field_index("lane"), "lane", pa.array(chunk_lanes, type=pa.string()))
        t = t.set_column(t.schema.get_field_index("lane"), "lane", pa.array(lanes, type=pa.string()))
        self._replace_tables({CHUNKS: c, ARTICLES: t}, lanes=meta or {})
