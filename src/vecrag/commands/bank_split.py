"""`vecrag bank split BANK --seed S --ratios 0.9,0.05,0.05`: recompute the article-level split."""

from __future__ import annotations

import argparse
import json

from vecrag.commands.ingest import _ratios

COMMAND = ("bank", "split")
HELP = "re-split a bank's articles into train/val/test (hash of article id with a seed)"
DESCRIPTION = """\
Recompute the article-level split: each article goes to train, val or test by a hash of (seed, article id)
compared with the ratios, so adding or removing other articles never moves an article between splits.
Rewrites articles.parquet atomically and updates the manifest (split seed, ratios, checksum). Models and
evaluations made with the old split are not comparable with ones made after.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bank", metavar="BANK", help="bank directory")
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--ratios", type=_ratios, default=(0.9, 0.05, 0.05), metavar="TRAIN,VAL,TEST",
                   help="fractions of articles per split (sum 1)")


def run(args: argparse.Namespace) -> int:
    from vecrag.bank.store import Bank
    from vecrag.fsutil import fs_error

    bank = Bank.open(args.bank)
    try:
        bank.resplit(args.seed, args.ratios)
    except OSError as e:
        raise fs_error(e, what="cannot write the new split into the bank (the bank is unchanged)",
                       hint="make the bank's folder writable (or copy the bank somewhere writable, or free space) "
                            "and rerun the command") from e
    print(json.dumps(bank.info()["split"]))
    return 0
