"""Operations over several banks: ``merge_banks`` combines banks built in parallel into one.

A corpus is cut into shards, each shard is ingested into its own bank (e.g. on its own machine), and
``vecrag bank merge B1 B2 ... --out BANK`` joins them in the given order:

- **Checks**: every input is opened with the bank checks (``vecrag.bank.check``: files, shapes, finite
  unit-norm vectors, consistent tables, checksums; ``verify`` re-reads every file even when a record says it
  passed), so a damaged input is refused before anything is written and never re-checksummed into the output.
- **Compatibility**: every input must have the same encoder (name, dim, pooling, normalisation, max sequence
  length), storage dtype and chunker settings; a mismatch is a :class:`VecragError` naming the first bank
  and the one that differs.
- **Rows**: vectors are copied block by block from each input's memory map into a memory-mapped
  ``vectors.npy`` (never the whole bank in RAM); chunk ids become ``chunk offset + local id``
  (dense 0..N-1 again); articles stay whole and in input order (``first_chunk`` shifted).
- **Article ids** (``article_ids``): ``keep`` keeps every id (they must be distinct across the inputs, as
  Wikipedia page ids are); ``offset`` adds to each bank's ids the id span of the banks before it (for
  running-number ids, the span is the number of articles the ingest read, so shards ingested separately get
  the ids a single ingest of the whole corpus would have given); ``auto`` (default) is ``offset`` when some
  input numbered its articles by running number, else ``keep``.
- **Duplicate titles** across inputs (the same shard merged twice, overlapping shards) are an error by
  default; ``duplicate_titles="allow"`` keeps them and counts them in ``manifest["merge"]``. Empty titles
  and duplicates within one input are not checked.
- **Split**: recomputed for the merged ids with the bank split rule (:func:`vecrag.bank.store.split_of`) and the
  inputs' split seed/ratios (they must agree unless ``split_seed``/``split_ratios`` are given). With
  ``keep`` ids the split of every article is the one it had in its input.
- **Atomicity**: everything is written into ``.<OUT>.merge-<pid>/`` beside ``OUT``, the manifest last (with
  counts and sha256 checksums), then renamed to ``OUT``. An existing ``OUT`` is refused unless ``force``;
  with ``force`` it is renamed aside, the new bank renamed in, the old one deleted. An interrupted merge
  leaves no ``OUT`` (or the old one); its temp directory is removed by the next merge to the same ``OUT``.
  The merged bank has no index: run ``vecrag index OUT``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vecrag.bank.store import ARTICLES, CHUNKS, FORMAT_VERSION, MANIFEST, VECTORS, Bank, record_verified, split_of
from vecrag.errors import VecragError
from vecrag.fsutil import atomic_write_json, fs_error, fsync_dir, fsync_path, sha256_file

log = logging.getLogger(__name__)

ID_POLICIES = ("auto", "keep", "offset")
BLOCK_ROWS = 1 << 18
CHUNK_SCHEMA = pa.schema([("chunk_id", pa.int64()), ("article_id", pa.int64()), ("position", pa.int32()),
                          ("text", pa.string()), ("lane", pa.string())])
_PER_INPUT_KEYS = ("index", "checksums", "created", "ingest", "import", "merge", "n_chunks", "n_articles", "split",
                   "lanes")


def _ids_are_running(m: dict[str, Any]) -> bool:
    """Whether a bank numbered its articles by running number (ids collide across separately built shards)."""
    return (m.get("ingest", {}).get("article_ids") == "running"
            or str(m.get("import", {}).get("article_ids", "")).startswith("running")
            or m.get("merge", {}).get("article_id_rule") == "running")


def _id_span(bank: Bank, ids: np.ndarray) -> int:
    """How many article ids the bank's numbering used up (articles read, empty ones included)."""
    m = bank.manifest
    span = m.get("ingest", {}).get("articles_read") or m.get("merge", {}).get("articles_read")
    top = int(ids.max()) + 1 if len(ids) else 0
    return max(int(span or 0), top)


def check_compatible(banks: list[Bank]) -> None:
    """Raise a VecragError naming the bank whose encoder, dtype or chunker differs from the first bank's."""
    ref = banks[0]
    for b in banks[1:]:
        for what, a, c in (("dim", ref.dim, b.dim), ("encoder", ref.encoder, b.encoder),
                           ("dtype", ref.manifest["dtype"], b.manifest["dtype"]),
                           ("chunker", ref.manifest.get("chunker"), b.manifest.get("chunker"))):
            if a != c:
                raise VecragError(f"cannot merge: {what} differs from the first bank's ({ref.path}: {a!r}; this "
                                  f"bank: {c!r})", path=b.path,
                                  hint="merge only banks built with the same encoder, dtype and chunker settings "
                                       "(see `vecrag bank info`); rebuild the odd one out")


def _split_settings(banks: list[Bank], seed: int | None,
                    ratios: tuple[float, float, float] | None) -> tuple[int, tuple[float, float, float]]:
    sp = [b.manifest.get("split", {}) for b in banks]
    if seed is None:
        seeds = {int(s.get("seed", 0)) for s in sp}
        if len(seeds) > 1:
            raise VecragError(f"the inputs use different split seeds {sorted(seeds)}", path=banks[0].path,
                              hint="choose one with --split-seed")
        seed = seeds.pop()
    if ratios is None:
        rs = {tuple(float(x) for x in s.get("ratios", (0.9, 0.05, 0.05))) for s in sp}
        if len(rs) > 1:
            raise VecragError(f"the inputs use different split ratios {sorted(rs)}", path=banks[0].path,
                              hint="choose them with --split TRAIN,VAL,TEST")
        ratios = rs.pop()  # type: ignore[assignment]
    return int(seed), tuple(float(x) for x in ratios)  # type: ignore[return-value]


def plan_ids(banks: list[Bank], policy: str = "auto") -> tuple[str, list[int]]:
    """Resolve the article-id policy; returns (policy, per-bank id offsets). Refuses colliding ids."""
    if policy not in ID_POLICIES:
        raise VecragError(f"unknown article id policy {policy!r}", hint=f"choose one of {', '.join(ID_POLICIES)}")
    ids = [b.articles.column("article_id").to_numpy() for b in banks]
    if policy == "auto":
        policy = "offset" if any(_ids_are_running(b.manifest) for b in banks) else "keep"
    offsets = [0] * len(banks)
    if policy == "offset":
        if any(len(x) and int(x.min()) < 0 for x in ids):
            raise VecragError("offset needs non-negative article ids", hint="use --article-ids keep")
        for i in range(1, len(banks)):
            offsets[i] = offsets[i - 1] + _id_span(banks[i - 1], ids[i - 1])
    all_ids = np.concatenate([x + o for x, o in zip(ids, offsets, strict=True)])
    uniq, counts = np.unique(all_ids, return_counts=True)
    if (counts > 1).any():
        dup = int(uniq[np.argmax(counts > 1)])
        owners = [str(b.path) for b, x, o in zip(banks, ids, offsets, strict=True) if (x + o == dup).any()]
        raise VecragError(f"article id {dup} appears in several inputs ({', '.join(owners[:3])}); "
                          f"{int((counts > 1).sum())} ids collide", path=owners[0],
                          hint="renumber with --article-ids offset (running-number ids), or check that no "
                               "shard is merged twice")
    return policy, offsets


def duplicate_titles(banks: list[Bank]) -> list[tuple[str, str, str]]:
    """(title, first bank, other bank) for every non-empty title found in more than one input."""
    seen: dict[str, int] = {}
    dups = []
    for i, b in enumerate(banks):
        for t in set(b.articles.column("title").to_pylist()):
            if not t:
                continue
            j = seen.setdefault(t, i)
            if j != i:
                dups.append((t, str(banks[j].path), str(b.path)))
    return dups


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_leftovers(out: Path) -> None:
    """Remove temp dirs of killed merges to ``out``; restore an old bank a kill left renamed aside."""
    for p in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = p.name[len(out.name) + 2:].rpartition("-")
        if kind not in ("merge", "old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not out.exists() and (p / MANIFEST).exists():
            os.rename(p, out)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _write_rows(banks: list[Bank], tmp: Path, offsets: list[int], block_rows: int) -> None:
    """vectors.npy (memory-mapped, block copies) and chunks.parquet (streamed record batches)."""
    n = sum(b.n for b in banks)
    dim, dtype = banks[0].dim, np.dtype(banks[0].manifest["dtype"])
    mm = np.lib.format.open_memmap(tmp / VECTORS, mode="w+", dtype=dtype, shape=(n, dim))
    start = 0
    with pq.ParquetWriter(tmp / CHUNKS, CHUNK_SCHEMA) as writer:
        for b, off in zip(banks, offsets, strict=True):
            for s in range(0, b.n, block_rows):
                e = min(b.n, s + block_rows)
                mm[start + s:start + e] = b.vectors[s:e]
            row = start
            for rb in pq.ParquetFile(b.path / CHUNKS).iter_batches(batch_size=block_rows):
                k = rb.num_rows
                cols = {f: rb.column(rb.schema.get_field_index(f)) for f in ("position", "text", "lane")}
                art = rb.column(rb.schema.get_field_index("article_id")).to_numpy() + off
                writer.write_batch(pa.record_batch([
                    pa.array(np.arange(row, row + k, dtype=np.int64)), pa.array(art, type=pa.int64()),
                    cols["position"].cast(pa.int32()), cols["text"].cast(pa.string()),
                    cols["lane"].cast(pa.string())], schema=CHUNK_SCHEMA))
                row += k
            if row != start + b.n:
                raise VecragError(f"chunks.parquet holds {row - start} rows for {b.n} vectors", path=b.path / CHUNKS,
                                  hint="the bank is damaged; rebuild it")
            start += b.n
            log.info("merged %s (%d chunks)", b.path, b.n)
    mm.flush()
    del mm
    fsync_path(tmp / VECTORS)


def merge_banks(inputs: list[str | Path], out: str | Path, *, article_ids: str = "auto",
                duplicate_titles_rule: str = "error", split_seed: int | None = None,
                split_ratios: tuple[float, float, float] | None = None, force: bool = False, verify: bool = False,
                block_rows: int = BLOCK_ROWS) -> Bank:
    """Merge ``inputs`` (in order) into a new bank at ``out``; see the module docstring for the rules."""
    if len(inputs) < 2:
        raise VecragError("give at least two banks to merge", hint="vecrag bank merge BANK1 BANK2 ... --out BANK")
    if duplicate_titles_rule not in ("error", "allow"):
        raise VecragError(f"duplicate_titles must be 'error' or 'allow', got {duplicate_titles_rule!r}")
    out = Path(out)
    t0 = time.perf_counter()
    banks = [Bank.open(p, verify=verify) for p in inputs]
    paths = [b.path.resolve() for b in banks]
    if len(set(paths)) != len(paths):
        raise VecragError("the same bank is given twice", path=inputs[0], hint="list each shard's bank once")
    if out.resolve() in paths:
        raise VecragError("--out is one of the input banks", path=out, hint="write the merged bank to a new directory")
    if out.exists() and not out.is_dir():
        raise VecragError("--out exists and is not a directory", path=out, hint="choose a new directory")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise VecragError("--out already exists", path=out, hint="choose another --out, or pass --force to "
                                                                     "replace it (kept intact until the merge is done)")
        if not (out / MANIFEST).exists():
            raise VecragError("--out is not empty and is not a vecrag bank; --force replaces only banks", path=out,
                              hint="choose a new or empty directory")
    check_compatible(banks)
    policy, offsets = plan_ids(banks, article_ids)
    dups = duplicate_titles(banks)
    if dups and duplicate_titles_rule == "error":
        t, a, b = dups[0]
        raise VecragError(f"{len(dups)} article titles appear in more than one input, e.g. {t!r} in {a} and {b}",
                          path=b, hint="check that the shards do not overlap, or pass --allow-duplicate-titles "
                                       "to keep both copies")
    seed, ratios = _split_settings(banks, split_seed, split_ratios)

    tmp = out.parent / f".{out.name}.merge-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise fs_error(e, what=f"cannot create the merged bank {out} (its temp folder beside it)") from e
    try:
        _write_rows(banks, tmp, offsets, block_rows)
        arts, chunk_off = [], 0
        for b, off in zip(banks, offsets, strict=True):
            t = b.articles
            arts.append(pa.table({
                "article_id": pa.array(t.column("article_id").to_numpy() + off, type=pa.int64()),
                "title": t.column("title").cast(pa.string()), "n_chunks": t.column("n_chunks").cast(pa.int64()),
                "first_chunk": pa.array(t.column("first_chunk").to_numpy() + chunk_off, type=pa.int64()),
                "lane": t.column("lane").cast(pa.string())}))
            chunk_off += b.n
        table = pa.concat_tables(arts).combine_chunks()
        splits = split_of(table.column("article_id").to_numpy(), seed, ratios)
        table = table.append_column("split", pa.array(list(splits), type=pa.string()))
        pq.write_table(table, tmp / ARTICLES)
        fsync_path(tmp / ARTICLES)
        lanes = [b.manifest.get("lanes") for b in banks]
        manifest = {k: v for k, v in banks[0].manifest.items() if k not in _PER_INPUT_KEYS}
        running = policy == "offset" and any(_ids_are_running(b.manifest) for b in banks)
        manifest.update({
            "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "n_chunks": int(chunk_off), "n_articles": int(table.num_rows),
            "split": {"seed": seed, "ratios": list(ratios)},
            "lanes": lanes[0] if all(x == lanes[0] for x in lanes) else {"source": "mixed (merged)",
                                                                         "inputs": lanes},
            "merge": {"inputs": [{"path": str(p), "n_chunks": b.n, "n_articles": b.articles.num_rows,
                                  "chunk_offset": int(sum(x.n for x in banks[:i])), "article_id_offset": int(o),
                                  "checksums": b.manifest.get("checksums", {})}
                                 for i, (p, b, o) in enumerate(zip(paths, banks, offsets, strict=True))],
                      "article_ids": policy, "article_id_rule": "running" if running else "given",
                      "articles_read": int(offsets[-1] + _id_span(banks[-1],
                                                                  banks[-1].articles.column("article_id").to_numpy())),
                      "duplicate_titles": len(dups), "seconds": round(time.perf_counter() - t0, 2)},
            "checksums": {f: sha256_file(tmp / f) for f in (VECTORS, CHUNKS, ARTICLES)},
        })
        atomic_write_json(tmp / MANIFEST, manifest)  # written last: its presence means complete
        record_verified(tmp, manifest)  # copied from checked inputs; the record survives the folder's rename
        fsync_path(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise fs_error(e, what=f"the merge stopped; {out} was not written or changed (the temp folder is "
                                   "removed)") from e
        raise
    return Bank.open(out)
