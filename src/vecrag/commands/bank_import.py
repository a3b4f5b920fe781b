"""`vecrag bank import`: build a bank from precomputed vectors + chunk metadata (bring your own encoder)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vecrag.commands.ingest import _ratios
from vecrag.errors import VecragError

COMMAND = ("bank", "import")
HELP = "build a bank from your own vectors (.npy/.npz) and chunk metadata (.parquet/.jsonl)"
DESCRIPTION = """\
Build a bank from vectors you computed elsewhere (e.g. 768-D GTR-T5 vectors, as in the LNSP two-tower design).

--vectors X.npy, or X.npz (its only array, or X.npz:KEY): one row per chunk.
--meta M.parquet or M.jsonl: one row per vector, same order, with columns
    article_id (int or string), position (or order: the chunk's place in its article), text,
    and optionally title and lane.
Rows are sorted by (article order of first appearance, position) when they are not already, so each
article's chunks are contiguous and in order; vectors follow. String article ids become running numbers.
Vectors must be finite; they must be unit-norm unless --normalize is given. --encoder-name is recorded in
the manifest and checked by every later loader: queries and models must use the same encoder.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vectors", required=True, metavar="X.npy|X.npz[:KEY]", help="vectors, one row per chunk")
    p.add_argument("--meta", required=True, metavar="META.parquet|.jsonl", help="chunk metadata, same row order")
    p.add_argument("--out", required=True, metavar="BANK", help="bank directory to create")
    p.add_argument("--encoder-name", required=True, help="the encoder that made the vectors, e.g. gtr-t5-base")
    p.add_argument("--dim", type=int, default=None, help="expected dimension (checked against the vectors)")
    p.add_argument("--pooling", default="mean", help="the encoder's pooling (recorded in the manifest)")
    p.add_argument("--max-seq-length", type=int, default=None, help="the encoder's max sequence length (recorded)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the vectors (else they must be unit)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="storage type")
    p.add_argument("--split", type=_ratios, default=(0.9, 0.05, 0.05), metavar="TRAIN,VAL,TEST")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a complete bank already at --out")


def load_vectors(spec: str) -> Any:
    import numpy as np

    path_s, _, key = spec.partition(":") if spec.count(":") and not Path(spec).exists() else (spec, "", "")
    path = Path(path_s)
    if not path.exists():
        raise VecragError("vectors file not found", path=path, hint="pass --vectors X.npy or X.npz[:KEY]")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if key:
                    if key not in keys:
                        raise VecragError(f"no array {key!r} in the .npz (it holds {', '.join(keys)})", path=path,
                                          hint=f"use --vectors {path}:KEY with one of: {', '.join(keys)}")
                elif len(keys) == 1:
                    key = keys[0]
                else:
                    raise VecragError(f"the .npz holds several arrays ({', '.join(keys)})", path=path,
                                      hint=f"name one: --vectors {path}:{keys[0]}")
                v = z[key]
        else:
            v = np.load(path, mmap_mode="r", allow_pickle=False)
    except VecragError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise VecragError(f"cannot read vectors: {e}", path=path,
                          hint="save them with numpy.save (.npy) or numpy.savez (.npz), no pickled objects") from e
    if v.ndim != 2 or v.dtype.kind != "f":
        raise VecragError(f"vectors must be a 2-D float array, got shape {v.shape} dtype {v.dtype}", path=path,
                          hint="one float row per chunk")
    return v


def load_meta(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise VecragError("metadata file not found", path=path, hint="pass --meta META.parquet or META.jsonl")
    if path.suffix == ".parquet":
        try:
            return pq.read_table(path)
        except (OSError, pa.ArrowException) as e:
            raise VecragError(f"cannot read Parquet: {e}", path=path, hint="write it with pyarrow/pandas") from e
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise VecragError(f"metadata is not UTF-8 text ({e})", path=path, hint="save it as UTF-8 JSONL") from e
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise VecragError(f"line {i} is not JSON ({e})", path=path, hint="one JSON object per line") from e
    if not rows:
        raise VecragError("metadata file is empty", path=path, hint="one JSON object per chunk")
    return pa.Table.from_pylist(rows)


def build_import(args: argparse.Namespace) -> Any:
    import numpy as np

    from vecrag.bank.ingest import install_bank, prepare_out
    from vecrag.bank.store import EncoderInfo, check_vectors, write_bank

    out = Path(args.out)
    prepare_out(out, overwrite=args.overwrite)
    v = load_vectors(args.vectors)
    meta_path = Path(args.meta)
    meta = load_meta(meta_path)
    cols = set(meta.column_names)
    pos_col = "position" if "position" in cols else "order" if "order" in cols else None
    missing = [c for c, ok in (("article_id", "article_id" in cols), ("position or order", pos_col),
                               ("text", "text" in cols)) if not ok]
    if missing:
        raise VecragError(f"metadata lacks column(s) {', '.join(missing)} (has {', '.join(sorted(cols))})",
                          path=meta_path, hint="provide article_id, position (or order), text; title, lane optional")
    if meta.num_rows != v.shape[0]:
        raise VecragError(f"{meta.num_rows} metadata rows for {v.shape[0]} vectors", path=meta_path,
                          hint="one metadata row per vector, in the same order")
    if args.dim is not None and v.shape[1] != args.dim:
        raise VecragError(f"vectors have dimension {v.shape[1]}, expected {args.dim}", path=args.vectors,
                          hint=f"check that they come from {args.encoder_name}, or fix --dim")
    raw_ids = meta.column("article_id").to_pylist()
    if any(a is None for a in raw_ids):
        raise VecragError("article_id has empty values", path=meta_path, hint="give every chunk its article id")
    if all(isinstance(a, int) for a in raw_ids):
        ids = np.asarray(raw_ids, dtype=np.int64)
        id_rule = "given"
    else:
        uniq: dict[Any, int] = {}
        ids = np.asarray([uniq.setdefault(str(a), len(uniq)) for a in raw_ids], dtype=np.int64)
        id_rule = "running (string ids mapped by first appearance)"
    try:
        pos = np.asarray(meta.column(pos_col).to_pylist(), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise VecragError(f"column {pos_col} must hold integers", path=meta_path) from e
    _, first_seen, inverse = np.unique(ids, return_index=True, return_inverse=True)
    art_order = np.argsort(np.argsort(first_seen))[inverse]  # each chunk's article's order of first appearance
    order = np.lexsort((pos, art_order))
    if np.any((np.diff(art_order[order]) == 0) & (np.diff(pos[order]) == 0)):
        raise VecragError("two chunks share the same (article_id, position)", path=meta_path,
                          hint="positions must be distinct within an article")
    sorted_needed = not np.array_equal(order, np.arange(len(order)))
    vec = np.asarray(v[order] if sorted_needed else v, dtype=np.float32)
    if args.normalize:
        bad = ~np.isfinite(vec).all(axis=1)
        if bad.any():
            raise VecragError(f"{int(bad.sum())} vectors contain NaN or Inf (first at row "
                              f"{int(order[np.flatnonzero(bad)[0]])})", path=args.vectors,
                              hint="re-encode those chunks or drop them (and their metadata rows) before import")
        norms = np.linalg.norm(vec, axis=1, keepdims=True)
        if (norms == 0).any():
            raise VecragError(f"{int((norms == 0).sum())} vectors are all zeros", path=args.vectors,
                              hint="re-encode those chunks or drop them before import")
        vec /= norms
    check_vectors(vec, where=args.vectors)
    texts = [str(t) if t is not None else "" for t in np.asarray(meta.column("text").to_pylist(), dtype=object)[order]]
    titles: dict[int, str] = {}
    if "title" in cols:
        for a, t in zip(ids[order], np.asarray(meta.column("title").to_pylist(), dtype=object)[order], strict=True):
            if t and int(a) not in titles:
                titles[int(a)] = str(t)
    lanes = ([str(x or "") for x in np.asarray(meta.column("lane").to_pylist(), dtype=object)[order]]
             if "lane" in cols else None)
    enc = EncoderInfo(args.encoder_name, int(vec.shape[1]), pooling=args.pooling, normalize=True,
                      max_seq_length=args.max_seq_length)
    tmp = out / ".import"
    extra = {"import": {"vectors": str(args.vectors), "meta": str(meta_path), "normalized": bool(args.normalize),
                        "reordered": bool(sorted_needed), "article_ids": id_rule},
             "lanes": {"source": "metadata" if lanes else "none"}}
    write_bank(tmp, vec, article_ids=ids[order], positions=pos[order], texts=texts, titles=titles,
               chunk_lanes=lanes, encoder=enc, dtype=args.dtype, split_seed=args.split_seed,
               split_ratios=args.split, extra=extra)
    install_bank(tmp, out)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    from vecrag.bank.store import Bank

    return Bank.open(out)


def run(args: argparse.Namespace) -> int:
    bank = build_import(args)
    print(json.dumps({"bank": str(bank.path), "n_chunks": bank.n, "n_articles": bank.manifest["n_articles"],
                      "dim": bank.dim, "encoder": bank.encoder["name"]}))
    return 0
