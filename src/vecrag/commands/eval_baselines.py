"""`vecrag eval baselines BANK --split test`: the query heuristics and two text peers, against the full bank."""

from __future__ import annotations

import argparse
import time

from vecrag.commands.sizes import at_least, check_seed, clamp_context

COMMAND = ("eval", "baselines")
HELP = "measure the baselines every model must beat (last / mean / ewma / oracle, BM25, encoder on text)"
DESCRIPTION = """\
For every held-out target chunk of --split with at least one earlier chunk in its article, build a query
from the previous --context chunk vectors (last vector, mean, exponentially weighted with alpha 0.5, 0.1
and 0.05, and the oracle = the target itself) and search the FULL bank (saved index, or exact search).
Beside them, two text-level peers: BM25 (bm25s, cached under BANK/bm25/) queried with the concatenated text
of the last --bm25-last context chunks, and the bank's encoder applied to that same text as one query.

Hit rules (the same for every later model): the context's own chunk ids are removed from the results
(--include-context keeps them); a retrieved chunk with the same text as the target counts as a hit
(--no-text-hits disables it). Prints Recall@K, MRR@10, median rank, number of queries and the 95 % Wilson
interval, and writes JSON to BANK/eval/baselines-<split>.json (or --out).

Example: vecrag eval baselines banks/wiki-500 --split test --context 10
"""


def _ks(s: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from e
    if not ks or min(ks) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return ks


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bank", metavar="BANK", help="bank directory")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="article split to evaluate")
    p.add_argument("--context", type=int, default=10,
                   help="context length L (previous chunks of the article; clamped to the longest article)")
    p.add_argument("--max-queries", type=int, default=None, help="evaluate a deterministic subset of targets")
    p.add_argument("--ks", type=_ks, default=(1, 5, 10, 50, 100, 500, 1000), help="Recall@K cut-offs")
    p.add_argument("--include-context", action="store_true", help="keep the context's own ids in the results")
    p.add_argument("--no-text-hits", action="store_true", help="only the target id itself counts as a hit")
    p.add_argument("--bm25-last", type=int, default=3, help="context chunks concatenated for the text baselines")
    p.add_argument("--no-text-baselines", action="store_true", help="skip BM25 and encoder-on-text")
    p.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"], help="search backend")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (search and encoder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-queries subset")
    p.add_argument("--out", default=None, help="JSON output (default BANK/eval/baselines-<split>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def check_arguments(args: argparse.Namespace) -> None:
    """Sizes that need no bank (``--context`` is bounded by the bank's longest article once it is open)."""
    at_least("--context", args.context, 1, hint="--context 10")
    at_least("--max-queries", args.max_queries, 1, hint="leave it out to evaluate every target")
    at_least("--bm25-last", args.bm25_last, 1, hint="--bm25-last 3")
    check_seed("--seed", args.seed)


def run(args: argparse.Namespace) -> int:
    from vecrag.eval.baselines import format_baselines

    report = evaluate(args)
    print(format_baselines(report))
    print(f"wrote {report['written'][0]}")
    return 0


def evaluate(args: argparse.Namespace) -> dict:
    """Recall@K of every baseline on the split: the report the command prints, with ``written`` (the files it
    wrote). ``vecrag.evaluate`` calls this."""
    import sys
    from pathlib import Path

    from vecrag.bank.sequences import make_samples
    from vecrag.bank.store import Bank
    from vecrag.eval.baselines import baselines_report, run_baselines
    from vecrag.fsutil import atomic_write_json, json_safe
    from vecrag.index.load import open_index
    from vecrag.runtime import report_openmp, set_threads

    check_arguments(args)
    set_threads()
    report_openmp()
    bank = Bank.open(args.bank)
    args.context = clamp_context("--context", args.context, bank, default=10)
    samples = make_samples(bank, args.split, max_samples=args.max_queries, seed=args.seed)
    index = open_index(bank, backend=args.backend, device=args.device)
    t = time.perf_counter()
    rows = run_baselines(bank, samples, args.context, args.ks, index=index, include_context=args.include_context,
                         text_hits=not args.no_text_hits, text_baselines=not args.no_text_baselines,
                         bm25_last=args.bm25_last, progress=not args.quiet and sys.stderr.isatty())
    report = baselines_report(bank, args.split, args.context, tuple(sorted(set(args.ks))), rows,
                              include_context=args.include_context, text_hits=not args.no_text_hits, index=index,
                              elapsed_s=round(time.perf_counter() - t, 2),
                              created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    out = Path(args.out) if args.out else bank.path / "eval" / f"baselines-{args.split}.json"
    atomic_write_json(out, json_safe(report))
    return {**report, "written": [str(out)]}
