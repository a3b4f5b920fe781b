"""`vecrag bank info BANK`: summary of a bank (counts, encoder, split, lanes histogram)."""

from __future__ import annotations

import argparse
import json

COMMAND = ("bank", "info")
HELP = "print a bank's summary: counts, encoder, dtype, split, lane histogram, index"
DESCRIPTION = """\
Print what a bank holds: chunk and article counts, the encoder (name, dimension, pooling, normalisation),
storage dtype, chunker settings, the article split, the lane histogram (articles per lane) and the index.
Every command checks a bank when it opens it: files present and shapes / row counts as the manifest says,
and, once per change of the files (recorded in BANK/.verified.json), every vector finite and unit-norm, the
tables consistent and the checksums equal. --verify re-reads every file now, even when a record says it passed.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bank", metavar="BANK", help="bank directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--verify", action="store_true",
                   help="re-read every file: checksums, vectors (NaN, norms, dimension), table consistency")


def format_info(info: dict) -> str:
    enc = info["encoder"]
    lines = [
        f"bank      {info['path']}",
        f"chunks    {info['n_chunks']:,} in {info['n_articles']:,} articles "
        f"(mean {info['chunks_per_article']['mean']:.1f}, max {info['chunks_per_article']['max']} per article)",
        f"vectors   {info['dim']}-D {info['dtype']}, {info['size_mb']} MB on disk",
        f"encoder   {enc.get('name')} ({enc.get('dim')}-D, {enc.get('pooling')} pooling, "
        f"normalize={enc.get('normalize')}, max_seq_length={enc.get('max_seq_length')})",
        f"chunker   {json.dumps(info['chunker'], sort_keys=True) if info.get('chunker') else '(not recorded)'}",
        f"split     seed {info['split'].get('seed')}, ratios {info['split'].get('ratios')}, articles "
        + ", ".join(f"{k} {v:,}" for k, v in info["split"]["articles"].items()),
        "lanes     " + ("(none)" if list(info["lanes"]) == ["(none)"] else ""),
    ]
    if list(info["lanes"]) != ["(none)"]:
        width = max(len(k) for k in info["lanes"])
        total = max(1, sum(info["lanes"].values()))
        for k, v in info["lanes"].items():
            lines.append(f"  {k:<{width}}  {v:>7,}  {100 * v / total:5.1f} %")
    idx = info.get("index")
    lines.append(f"index     {json.dumps(idx, sort_keys=True) if idx else '(none: run `vecrag index BANK`)'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from vecrag.bank.store import Bank

    bank = Bank.open(args.bank, verify=args.verify)
    info = bank.info()
    if args.verify:
        info["verified"] = True
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_info(info))
        if args.verify:
            print("verify    OK (checksums, finite unit-norm vectors)")
    return 0
