"""Resumable, atomic ingest: SOURCE... -> articles -> chunks -> vectors -> a bank.

Work happens in ``OUT/.ingest/``::

    params.json                     what this build is (sources fingerprint, encoder, chunker, dtype, ...)
    batch-000000.npy                vectors of one committed batch (the bank's dtype)
    batch-000000.chunks.parquet     article_ord, position, text (one row per vector)
    batch-000000.articles.parquet   article_ord, read_index, source_id, title, lane, n_chunks
    progress.json                   committed batches (+ sha256 of their files), articles read, chunks, seconds
    assembled/                      the finished bank before it is moved into OUT

Articles are read in order and grouped into batches of whole articles holding at least ``batch_chunks``
chunks. A batch is committed by writing its three files atomically and then ``progress.json`` (atomically);
files of a batch that progress.json does not name are ignored and overwritten. A rerun of the same command
skips the articles already read and continues, and because batches are cut at the same article boundaries
and encoded with the same batch size, the finished bank is bit-identical to an uninterrupted build (the
encoder's output depends in the last bits on the batch a text is in; that is why batches must match).
The staged content depends on the sources, format, encoder, device, encoder precision (bf16 under
$VECRAG_ENCODER_PRECISION, see vecrag.bank.encode), chunker, dtype, max_articles, batch_chunks and batch_size:
a rerun that differs in any of them is refused (``--restart`` discards the staging). The split and the lane
spec are applied at the end and are taken from the command that finishes.

Article ids: each article's source id when every kept article's source id is a non-negative integer and all
are distinct (e.g. Wikipedia page ids); otherwise the article's 0-based running number in the source stream
(empty articles count, so the ids do not move when the chunker changes). The manifest says which
(``ingest.article_ids`` = ``source`` | ``running``).

``max_articles`` counts articles read from the sources (empty ones included): ``--max-articles 500`` is the
first 500 articles of the corpus.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import logging
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vecrag.bank.check import RECORD
from vecrag.bank.store import ARTICLES, CHUNKS, MANIFEST, VECTORS, Bank, forget_verified, write_bank
from vecrag.errors import VecragError
from vecrag.fsutil import atomic_save_npy, atomic_write_json, atomic_write_parquet, fs_error, sha256_file

log = logging.getLogger(__name__)

STAGE = ".ingest"
PARAMS = "params.json"
PROGRESS = "progress.json"
ASSEMBLED = "assembled"
DEFAULT_BATCH_CHUNKS = 512
STAGE_VERSION = 1
BANK_FILES = (MANIFEST, VECTORS, CHUNKS, ARTICLES)


@dataclass
class Progress:
    batches: list[dict[str, Any]] = field(default_factory=list)
    articles_read: int = 0
    articles_kept: int = 0
    empty_skipped: int = 0
    chunks: int = 0
    seconds: float = 0.0
    finished: bool = False
    assembled: bool = False
    bad_lines: int = 0

    @classmethod
    def load(cls, path: Path) -> Progress:
        import json

        if not path.exists():
            return cls()
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as e:
            raise VecragError(f"staging progress file is unreadable ({e})", path=path,
                              hint="rerun with --restart to start the ingest over") from e

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))


def _batch_files(k: int) -> tuple[str, str, str]:
    return f"batch-{k:06d}.npy", f"batch-{k:06d}.chunks.parquet", f"batch-{k:06d}.articles.parquet"


def source_fingerprint(sources: list[str]) -> list[dict[str, Any]]:
    """Files behind the sources (globs expanded, folders walked) with size and mtime, for resume checks."""
    out: list[dict[str, Any]] = []
    for s in sources:
        paths = sorted(glob.glob(s)) if any(ch in s for ch in "*?[") else [s]
        for p in map(Path, paths):
            if p.is_dir():
                files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
                out.append({"source": str(p.resolve()),
                            "files": [[str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]})
            elif p.exists():
                st = p.stat()
                out.append({"source": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
            else:
                out.append({"source": s})
    return out


def _config_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        return dict(cfg)
    if is_dataclass(cfg):
        return asdict(cfg)  # type: ignore[arg-type]
    return dict(vars(cfg))


def make_chunker(chunker_cfg: Any = None) -> Any:
    from vecrag.corpus import Chunker, ChunkerConfig

    if chunker_cfg is None:
        return Chunker(ChunkerConfig())
    if isinstance(chunker_cfg, ChunkerConfig):
        return Chunker(chunker_cfg)
    try:
        return Chunker(ChunkerConfig(**_config_dict(chunker_cfg)))
    except TypeError as e:
        raise VecragError(f"bad chunker settings {chunker_cfg!r}: {e}", hint="see `vecrag ingest --help`") from e


def _describe_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    parts = []
    for k in keys:
        a, b = repr(old.get(k)), repr(new.get(k))
        parts.append(f"{k}: staged {a[:160]} != now {b[:160]}")
    return "; ".join(parts)


def prepare_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an --out that is a file, a complete bank (unless ``overwrite``) or a folder of someone's files.

    Files with bank names (vectors.npy, ...) count as the user's own unless an interrupted ingest or import
    (``.ingest`` / ``.import``) explains them: ``--overwrite`` replaces only a complete bank."""
    if out.exists() and not out.is_dir():
        raise VecragError("--out exists and is not a directory", path=out, hint="choose a new directory for the bank")
    if not out.exists():
        return
    if (out / MANIFEST).exists():
        if not overwrite:
            raise VecragError("--out already holds a complete bank", path=out,
                              hint="choose another --out, or pass --overwrite to replace it (the old bank stays "
                                   "intact until the new one is complete)")
        return
    names = {p.name for p in out.iterdir()}
    staged = bool(names & {STAGE, ".import"})
    ours = {STAGE, ".import"} | ({*BANK_FILES, "index", RECORD} if staged else set())
    extra = sorted(names - ours)
    if extra:
        looks_like_bank = set(extra) <= {*BANK_FILES, "index", RECORD}
        why = ("holds bank files but no manifest.json, and no interrupted build explains them"
               if looks_like_bank else "is not empty and is not a vecrag bank")
        raise VecragError(f"--out {why} (holds {', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}); "
                          "these files are left alone, with or without --overwrite (it replaces only a complete "
                          "bank)", path=out,
                          hint="choose a new or empty directory for the bank, or move those files away first")


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())  # CPU results can change in the last bits with the thread count


def _skip(it: Iterator[Any], n: int, sources: list[str]) -> None:
    got = sum(1 for _ in itertools.islice(it, n))
    if got != n:
        raise VecragError(f"the sources now hold {got} articles but {n} were already ingested", path=sources[0],
                          hint="the sources changed since the ingest started: rerun with --restart")


class _Stager:
    """Commits batches to the staging directory and keeps progress.json in step."""

    def __init__(self, stage: Path, progress: Progress, encoder: Any, dtype: str, batch_size: int, bar: Any):
        self.stage = stage
        self.p = progress
        self.encoder = encoder
        self.dtype = dtype
        self.batch_size = batch_size
        self.bar = bar
        self.t0 = time.perf_counter()
        self.base_seconds = progress.seconds

    def commit(self, chunk_rows: dict[str, list[Any]], art_rows: dict[str, list[Any]], read_end: int,
               empty_end: int) -> None:
        k = len(self.p.batches)
        names = _batch_files(k)
        texts = chunk_rows["text"]
        vecs = self.encoder.encode(texts, batch_size=self.batch_size) if texts else np.zeros(
            (0, self.encoder.info.dim), np.float32)
        atomic_save_npy(self.stage / names[0], vecs.astype(self.dtype))
        atomic_write_parquet(self.stage / names[1], pa.table({
            "article_ord": pa.array(chunk_rows["article_ord"], type=pa.int64()),
            "position": pa.array(chunk_rows["position"], type=pa.int32()),
            "text": pa.array(texts, type=pa.string())}))
        atomic_write_parquet(self.stage / names[2], pa.table({
            "article_ord": pa.array(art_rows["article_ord"], type=pa.int64()),
            "read_index": pa.array(art_rows["read_index"], type=pa.int64()),
            "source_id": pa.array(art_rows["source_id"], type=pa.string()),
            "title": pa.array(art_rows["title"], type=pa.string()),
            "lane": pa.array(art_rows["lane"], type=pa.string()),
            "n_chunks": pa.array(art_rows["n_chunks"], type=pa.int64())}))
        p = self.p
        p.batches.append({"index": k, "n_chunks": len(texts), "n_articles": len(art_rows["title"]),
                          "articles_read": read_end,
                          "sha256": {n: sha256_file(self.stage / n) for n in names}})
        p.articles_read = read_end
        p.articles_kept += len(art_rows["title"])
        p.empty_skipped = empty_end
        p.chunks += len(texts)
        p.seconds = round(self.base_seconds + time.perf_counter() - self.t0, 3)
        p.save(self.stage / PROGRESS)  # the commit point
        if self.bar is not None:
            self.bar.update(len(texts))
            self.bar.set_postfix(articles=p.articles_kept, refresh=False)


def _new_rows() -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    return ({"article_ord": [], "position": [], "text": []},
            {"article_ord": [], "read_index": [], "source_id": [], "title": [], "lane": [], "n_chunks": []})


def _stage_articles(articles: Iterable[Any], chunker: Any, stager: _Stager, *, batch_chunks: int,
                    max_articles: int | None) -> None:
    p = stager.p
    read, empty, kept = p.articles_read, p.empty_skipped, p.articles_kept
    chunk_rows, art_rows = _new_rows()
    for art in articles:
        if max_articles is not None and read >= max_articles:
            break
        read += 1
        chunks = chunker.chunk(art.text or "")
        if not chunks:
            empty += 1
        else:
            chunk_rows["article_ord"].extend([kept] * len(chunks))
            chunk_rows["position"].extend(range(len(chunks)))
            chunk_rows["text"].extend(chunks)
            art_rows["article_ord"].append(kept)
            art_rows["read_index"].append(read - 1)
            art_rows["source_id"].append(str(getattr(art, "source_id", "") or ""))
            art_rows["title"].append(str(art.title or ""))
            art_rows["lane"].append(str(getattr(art, "lane", "") or ""))
            art_rows["n_chunks"].append(len(chunks))
            kept += 1
        if len(chunk_rows["text"]) >= batch_chunks:
            stager.commit(chunk_rows, art_rows, read, empty)
            chunk_rows, art_rows = _new_rows()
    if chunk_rows["text"] or read != p.articles_read:
        stager.commit(chunk_rows, art_rows, read, empty)


def _load_staged(stage: Path, progress: Progress) -> tuple[np.ndarray, pa.Table, pa.Table]:
    vecs, chunks, arts = [], [], []
    for b in progress.batches:
        names = _batch_files(int(b["index"]))
        for n in names:
            f = stage / n
            if not f.exists() or sha256_file(f) != b["sha256"][n]:
                raise VecragError("a committed staging batch is missing or damaged", path=f,
                                  hint="rerun with --restart to rebuild from scratch")
        vecs.append(np.load(stage / names[0]))
        chunks.append(pq.read_table(stage / names[1]))
        arts.append(pq.read_table(stage / names[2]))
    return np.concatenate(vecs), pa.concat_tables(chunks), pa.concat_tables(arts)


def _article_ids(arts: pa.Table) -> tuple[np.ndarray, str]:
    sids = arts.column("source_id").to_pylist()
    if sids and all(s.isascii() and s.isdigit() and len(s) < 18 for s in sids):
        ids = np.asarray([int(s) for s in sids], dtype=np.int64)
        if len(np.unique(ids)) == len(ids):
            return ids, "source"
    return arts.column("read_index").to_numpy().astype(np.int64), "running"


def install_bank(src: Path, out: Path) -> None:
    """Move a complete bank written at ``src`` into ``out``: out's manifest removed first (the old bank is
    incomplete from here), a stale index removed, data files renamed over, the manifest renamed last.
    Renames only: an interrupted install is finished by calling this again."""
    import os

    if not (src / MANIFEST).exists():
        if (out / MANIFEST).exists():
            return  # installed by a run killed before it removed the staging directory
        raise VecragError("staging says the bank was assembled but it is not there", path=src,
                          hint="rerun with --restart")
    (out / MANIFEST).unlink(missing_ok=True)
    forget_verified(out)
    if (out / "index").is_dir():
        shutil.rmtree(out / "index")  # an index of the bank being replaced is stale
    for f in (VECTORS, CHUNKS, ARTICLES):
        if (src / f).exists():
            os.replace(src / f, out / f)
    os.replace(src / MANIFEST, out / MANIFEST)


def _open_stage(out: Path, stage: Path, params: dict[str, Any]) -> bool:
    """Check a staged ingest's settings, or create the staging folder; True when OUT itself was created."""
    import json

    if stage.exists() and (stage / PARAMS).exists():
        old = json.loads((stage / PARAMS).read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(params)):
            raise VecragError("an interrupted ingest with different settings is staged here ("
                              + _describe_diff(old, json.loads(json.dumps(params))) + ")", path=stage,
                              hint="rerun with exactly the same settings to finish it, or add --restart to "
                                   "discard the staged work and start over with the new settings")
        return False
    created = not out.exists()
    try:
        stage.mkdir(parents=True, exist_ok=True)
        atomic_write_json(stage / PARAMS, params)
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_if_empty(out, created)
        raise fs_error(e, what="cannot create the bank folder (--out)") from e
    return created


def _remove_if_empty(out: Path, created: bool) -> None:
    """Remove OUT when this ingest created it and nothing is in it (a failed first batch leaves no trace)."""
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()


def ingest(sources: list[str] | str, out: str | Path, *, fmt: str | None = None, encoder: Any = None,
           dtype: str = "float16", chunker_cfg: Any = None, lanes: str | None = None, split_seed: int = 0,
           split_ratios: tuple[float, float, float] = (0.9, 0.05, 0.05), max_articles: int | None = None,
           batch_chunks: int = DEFAULT_BATCH_CHUNKS, batch_size: int | None = None, device: str = "auto",
           progress: bool = True, restart: bool = False, overwrite: bool = False,
           skip_bad_lines: bool = False) -> Bank:
    """Build (or finish building) the bank at ``out`` from ``sources``; see the module docstring."""
    from vecrag.bank.encode import DEFAULT_BATCH_SIZE, DEFAULT_ENCODER, Encoder, encoder_precision, load_encoder
    from vecrag.bank.lanes import parse_lane_spec
    from vecrag.corpus import iter_articles
    from vecrag.runtime import pick_device

    sources = [sources] if isinstance(sources, str | Path) else [str(s) for s in sources]
    if not sources:
        raise VecragError("no sources given", hint="vecrag ingest FILE... --out BANK")
    if dtype not in ("float16", "float32"):
        raise VecragError(f"dtype must be float16 or float32, got {dtype!r}", hint="--dtype float16")
    if batch_chunks < 1:
        raise VecragError(f"batch_chunks (--batch-chunks) must be positive, got {batch_chunks}",
                          hint="--batch-chunks 512 (chunks per committed batch)")
    if max_articles is not None and max_articles < 1:
        raise VecragError(f"max_articles (--max-articles) must be positive, got {max_articles}",
                          hint="give N >= 1, or drop --max-articles to read every article")
    batch_size = int(batch_size or DEFAULT_BATCH_SIZE)
    lane_spec = parse_lane_spec(lanes)
    out = Path(out)
    stage = out / STAGE
    if restart and stage.exists():
        shutil.rmtree(stage)
    if not stage.exists():
        prepare_out(out, overwrite=overwrite)

    # read the first article before anything heavy: bad input fails fast and leaves OUT alone
    stats: dict[str, int] = {}
    it = iter(iter_articles(sources, fmt=fmt, on_error="skip" if skip_bad_lines else "raise", stats=stats,
                            skip_empty=False))
    first = next(it, None)
    if first is None:
        raise VecragError("no articles found in the sources", path=sources[0],
                          hint="check the file is not empty and the format (--format) is right")
    articles: Iterator[Any] = itertools.chain([first], it)

    chunker = make_chunker(chunker_cfg)
    enc_name = encoder.info.name if isinstance(encoder, Encoder) else (encoder or DEFAULT_ENCODER)
    dev = encoder.device if isinstance(encoder, Encoder) else pick_device(device)
    params = {"stage_version": STAGE_VERSION, "sources": source_fingerprint(sources), "format": fmt,
              "encoder": enc_name, "device": dev, "dtype": dtype, "chunker": chunker.config_dict(),
              "max_articles": max_articles, "batch_chunks": int(batch_chunks), "batch_size": batch_size,
              "skip_bad_lines": bool(skip_bad_lines), "torch_threads": _torch_threads()}
    precision = encoder.precision if isinstance(encoder, Encoder) else encoder_precision(dev)
    if precision == "bf16":  # recorded only when it differs from the default: older staged ingests still resume
        params["encoder_precision"] = precision
    created_out = _open_stage(out, stage, params)
    prog = Progress.load(stage / PROGRESS)
    try:
        enc = encoder if isinstance(encoder, Encoder) else load_encoder(enc_name, device=dev)
        if not prog.finished:
            _skip(articles, prog.articles_read, sources)
            bar = None
            if progress and sys.stderr.isatty():
                from tqdm import tqdm

                bar = tqdm(desc="ingest", unit="chunk", initial=prog.chunks, dynamic_ncols=True)
            stager = _Stager(stage, prog, enc, dtype, batch_size, bar)
            try:
                _stage_articles(articles, chunker, stager, batch_chunks=batch_chunks, max_articles=max_articles)
            finally:
                if bar is not None:
                    bar.close()
            prog.finished = True
            prog.bad_lines = int(stats.get("bad_lines", 0))
            prog.save(stage / PROGRESS)
        if prog.chunks == 0:
            raise VecragError(f"no chunks: {prog.articles_read} articles read, all empty", path=sources[0],
                              hint="check the input format (--format) and that the articles have text")
        if not prog.assembled:
            _assemble(stage, prog, enc, lane_spec, split_seed=split_seed, split_ratios=split_ratios,
                      dtype=dtype, sources=sources, fmt=fmt, chunker=chunker)
        install_bank(stage / ASSEMBLED, out)
    except BaseException as e:
        if prog.chunks == 0:  # no chunk committed, nothing to keep: leave OUT as it was
            shutil.rmtree(stage, ignore_errors=True)
            _remove_if_empty(out, created_out)
        if isinstance(e, OSError):
            kept = f"; the {len(prog.batches)} committed batches are kept" if prog.chunks else ""
            raise fs_error(e, what=f"the ingest stopped{kept}") from e
        raise
    shutil.rmtree(stage)
    return Bank.open(out)


def _assemble(stage: Path, prog: Progress, enc: Any, lane_spec: Any, *, split_seed: int,
              split_ratios: tuple[float, float, float], dtype: str, sources: list[str], fmt: str | None,
              chunker: Any) -> None:
    from vecrag.bank.lanes import assign_lanes

    vecs, chunks, arts = _load_staged(stage, prog)
    ids, id_rule = _article_ids(arts)
    counts = arts.column("n_chunks").to_numpy()
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    titles = arts.column("title").to_pylist()
    res = assign_lanes(lane_spec, vectors=vecs, first_chunk=first, n_chunks=counts, titles=titles,
                       metadata_lanes=arts.column("lane").to_pylist(), embed=enc.encode)
    chunk_lanes = np.repeat(np.asarray(res.article_lanes, dtype=object), counts).tolist()
    art_of_chunk = ids[chunks.column("article_ord").to_numpy()]
    secs = max(prog.seconds, 1e-9)
    extra = {
        "chunker": chunker.config_dict(),
        "lanes": res.meta,
        "ingest": {"sources": sources, "format": fmt, "articles_read": prog.articles_read,
                   "articles_kept": prog.articles_kept, "empty_skipped": prog.empty_skipped,
                   "bad_lines_skipped": prog.bad_lines,
                   "chunks": prog.chunks, "seconds": round(prog.seconds, 2),
                   "chunks_per_s": round(prog.chunks / secs, 1), "batches": len(prog.batches),
                   "article_ids": id_rule, "device": enc.device,
                   "encoder_precision": getattr(enc, "precision", "fp32")},
    }
    write_bank(stage / ASSEMBLED, vecs, article_ids=art_of_chunk, positions=chunks.column("position").to_numpy(),
               texts=chunks.column("text").to_pylist(), titles=titles, chunk_lanes=chunk_lanes,
               encoder=enc.info, dtype=dtype, split_seed=split_seed, split_ratios=split_ratios, extra=extra)
    prog.assembled = True
    prog.save(stage / PROGRESS)
