"""`vecrag ingest SOURCE... --out BANK`: corpus -> chunks -> vectors -> bank (resumable)."""

from __future__ import annotations

import argparse
import json
import logging

from vecrag.errors import VecragError

COMMAND = ("ingest",)
HELP = "turn a corpus into a bank of chunk vectors (resumable: rerun the same command after a kill)"
DESCRIPTION = """\
Read SOURCE files (several files or a glob, read in order as one corpus; the format is detected or named
with --format), cut each article into chunks of 1-3 sentences, embed the chunks and write a bank
directory: vectors.npy, chunks.parquet, articles.parquet and manifest.json (written last).

Resumable and atomic: work is committed batch by batch under BANK/.ingest/. If the command is killed at any
moment, run the SAME command again: it continues from the last committed batch and the finished bank is
identical to an uninterrupted build. A rerun with different settings is refused; add --restart to discard
the staged work. An existing complete bank at --out is only replaced with --overwrite, and stays intact
until the new one is complete.

Lanes: by default the corpus's own lane field (if any). --lanes FILE.yaml (lane name -> description; see
the shipped presets/lanes.yaml, selected with --lanes default) puts each article in the lane whose
embedded description is nearest to the article's mean chunk vector; --lanes kmeans:K clusters articles.

Example: vecrag ingest ../shared/data/enwiki2015/part-01.jsonl.xz --out banks/wiki-500 --max-articles 500
"""


def _ratios(s: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in s.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {s!r}") from e
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers (train,val,test), got {s!r}")
    return parts  # type: ignore[return-value]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="corpus files, folders or globs (read in order)")
    p.add_argument("--out", required=True, metavar="BANK", help="bank directory to create")
    p.add_argument("--format", dest="fmt", default=None,
                   help="input format (detected when omitted): jsonl, wikitext, wikiextractor, mediawiki, txt, "
                        "parquet, hf")
    p.add_argument("--encoder", default=None,
                   help="sentence-transformers model name or local folder (default: all-MiniLM-L6-v2, offline)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="vector storage type")
    p.add_argument("--max-articles", type=int, default=None, metavar="N",
                   help="read only the first N articles of the corpus (empty ones count)")
    p.add_argument("--lanes", default=None, metavar="SPEC",
                   help="metadata (corpus field), FILE.yaml, default (shipped lanes.yaml), kmeans:K or none")
    p.add_argument("--split", type=_ratios, default=(0.9, 0.05, 0.05), metavar="TRAIN,VAL,TEST",
                   help="article-level split ratios")
    p.add_argument("--split-seed", type=int, default=0, metavar="S", help="seed of the article split hash")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--batch-size", type=int, default=None,
                   help="encoder batch size (default 32: fastest on CPU; try 256 on a GPU)")
    p.add_argument("--batch-chunks", type=int, default=512, metavar="N",
                   help="chunks per committed batch (the unit of resume)")
    p.add_argument("--max-sentences", type=int, default=None, help="chunker: most sentences per chunk")
    p.add_argument("--max-chars", type=int, default=None, help="chunker: character budget per chunk")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip (and count) malformed records such as a JSONL line that is not JSON, instead of stopping")
    p.add_argument("--restart", action="store_true", help="discard an interrupted ingest staged in BANK/.ingest")
    p.add_argument("--overwrite", action="store_true", help="replace a complete bank already at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def chunker_overrides(args: argparse.Namespace) -> dict[str, int] | None:
    cfg = {k: v for k, v in (("max_sentences", args.max_sentences), ("max_chars", args.max_chars)) if v is not None}
    for k, v in cfg.items():
        if v < 1:
            raise VecragError(f"--{k.replace('_', '-')} must be positive, got {v}")
    return cfg or None


def run(args: argparse.Namespace) -> int:
    from vecrag.bank.ingest import ingest
    from vecrag.runtime import report_openmp, set_threads

    set_threads()
    report_openmp()
    bank = ingest(args.sources, args.out, fmt=args.fmt, encoder=args.encoder, dtype=args.dtype,
                  chunker_cfg=chunker_overrides(args), lanes=args.lanes, split_seed=args.split_seed,
                  split_ratios=args.split, max_articles=args.max_articles, batch_chunks=args.batch_chunks,
                  batch_size=args.batch_size, device=args.device, progress=not args.quiet,
                  restart=args.restart, overwrite=args.overwrite, skip_bad_lines=args.skip_bad_lines)
    st = bank.manifest.get("ingest", {})
    logging.getLogger("vecrag.bank.ingest").info(
        "bank %s: %d chunks, %d articles (%d empty skipped), %.1f chunks/s", bank.path, bank.n,
        bank.manifest["n_articles"], st.get("empty_skipped", 0), st.get("chunks_per_s", 0.0))
    print(json.dumps({"bank": str(bank.path), "n_chunks": bank.n, "n_articles": bank.manifest["n_articles"],
                      "empty_skipped": st.get("empty_skipped"), "chunks_per_s": st.get("chunks_per_s"),
                      "lanes": bank.info()["lanes"]}, indent=None))
    return 0
