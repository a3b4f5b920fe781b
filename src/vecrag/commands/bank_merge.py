"""`vecrag bank merge BANK1 BANK2 ... --out BANK`: combine banks built in parallel (one per corpus shard)."""

from __future__ import annotations

import argparse
import json

from vecrag.commands.ingest import _ratios

COMMAND = ("bank", "merge")
HELP = "merge banks built in parallel (e.g. one per corpus shard) into one bank"
DESCRIPTION = """\
Merge banks, in the order given, into a new bank. The inputs must share encoder, dtype and chunker settings.
Vectors are streamed through memory maps (the merged bank never sits in RAM); chunk ids are renumbered
0..N-1; articles stay whole and in input order; the article split is recomputed with the bank split rule.

Article ids (--article-ids): keep = keep them (must be distinct across inputs, e.g. Wikipedia page ids);
offset = shift each bank's ids past the previous banks' (running-number ids: shards get the ids one ingest of
the whole corpus would give); auto = offset when an input numbered its articles by running number, else keep.
A title found in two inputs is an error (overlapping shards, or a shard merged twice) unless
--allow-duplicate-titles. The result is written to a temp directory beside --out and renamed into place:
an interrupted merge leaves no half bank. An input that fails the bank checks (missing files, NaN or
non-unit vectors, inconsistent tables, checksum mismatch) is refused. An existing --out is refused unless
--force. Run `vecrag index OUT` afterwards (the merged bank has no index).

Example: vecrag bank merge banks/shard-0 banks/shard-1 --out banks/wiki-full
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("banks", nargs="+", metavar="BANK", help="input banks, in order (at least two)")
    p.add_argument("--out", required=True, metavar="BANK", help="the merged bank directory to create")
    p.add_argument("--article-ids", choices=("auto", "keep", "offset"), default="auto", help="article id rule")
    p.add_argument("--allow-duplicate-titles", action="store_true", help="keep titles found in several inputs")
    p.add_argument("--split", type=_ratios, default=None, metavar="TRAIN,VAL,TEST",
                   help="split ratios (default: the inputs' ratios, which must agree)")
    p.add_argument("--split-seed", type=int, default=None, help="split seed (default: the inputs' seed)")
    p.add_argument("--verify", action="store_true",
                   help="re-read every input file (checksums, vectors) even when a record says it passed; inputs "
                        "are always checked when they changed since their last check")
    p.add_argument("--force", action="store_true", help="replace an existing bank at --out")


def run(args: argparse.Namespace) -> int:
    from vecrag.bank.ops import merge_banks

    bank = merge_banks(args.banks, args.out, article_ids=args.article_ids,
                       duplicate_titles_rule="allow" if args.allow_duplicate_titles else "error",
                       split_seed=args.split_seed, split_ratios=args.split, force=args.force, verify=args.verify)
    m = bank.manifest
    print(json.dumps({"bank": str(bank.path), "n_chunks": bank.n, "n_articles": m["n_articles"], "dim": bank.dim,
                      "inputs": len(m["merge"]["inputs"]), "article_ids": m["merge"]["article_ids"],
                      "duplicate_titles": m["merge"]["duplicate_titles"], "seconds": m["merge"]["seconds"],
                      "next": f"vecrag index {bank.path}"}))
    return 0
