"""`vecrag eval retriever RUN [--bank BANK] --split test`: the trained tower next to every baseline."""

from __future__ import annotations

import argparse

COMMAND = ("eval", "retriever")
HELP = "evaluate a trained retriever run against the baselines on the same queries (Recall@K with 95% CIs)"
DESCRIPTION = """\
Load RUN's checkpoint (--checkpoint best by default), turn every --split sample's context into a query with
the tower and search the FULL bank; score it and every baseline (last / mean / ewma / oracle; --text-baselines
adds BM25 and encoder-on-text) on the same samples, in this process, with the shared hit rules (context ids
excluded; same text = hit). Prints Recall@K, MRR@10, median rank, the 95 % Wilson interval and the share of
the gap between the best baseline and the oracle that the tower closes, and where the tower's and its anchor's
top 10 go (the target / other chunks of the target's article only / neither: the right article with the wrong
chunk is most of what is left on Wikipedia banks); writes the JSON and the table to
RUN/metrics/retriever-<split>-<checkpoint>.{json,txt}.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from vecrag.commands.eval_baselines import _ks

    p.add_argument("run", metavar="RUN", help="run directory of `vecrag train retriever`")
    p.add_argument("--bank", default=None, help="bank (default: the run's training bank)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--max-queries", type=int, default=None, help="evaluate a deterministic subset of targets")
    p.add_argument("--checkpoint", default="best", help="best, last, swa or a file name in RUN/checkpoints")
    p.add_argument("--ks", type=_ks, default=(1, 5, 10, 50, 100, 500, 1000), help="Recall@K cut-offs")
    p.add_argument("--backend", default="auto", choices=["auto", "faiss", "torch"], help="search backend")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--text-baselines", action="store_true", help="also BM25 and encoder-on-text (slower)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-queries subset")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    report = evaluate(args)
    print(report_text(report))
    print(f"wrote {report['written'][0]}")
    return 0


def report_text(report: dict) -> str:
    from vecrag.eval.baselines import format_baselines
    from vecrag.eval.retriever_eval import format_gap, format_misses

    return "\n".join(t for t in (format_baselines(report), format_gap(report), format_misses(report)) if t)


def evaluate(args: argparse.Namespace) -> dict:
    """The tower against every baseline on the split: the report the command prints, with ``written`` (the files it
    wrote). ``vecrag.evaluate`` calls this."""
    import sys
    from pathlib import Path

    from vecrag.bank.store import Bank
    from vecrag.commands.sizes import at_least, check_seed
    from vecrag.eval.retriever_eval import evaluate_retriever
    from vecrag.fsutil import atomic_write_json, atomic_write_text, json_safe
    from vecrag.runs.layout import METRICS
    from vecrag.runtime import pick_device, report_openmp, set_threads

    at_least("--max-queries", args.max_queries, 1, hint="leave it out to evaluate every target")
    check_seed("--seed", args.seed)
    set_threads()
    report_openmp()
    device = pick_device(args.device)
    bank = Bank.open(args.bank) if args.bank else None
    report = evaluate_retriever(args.run, bank, split=args.split, max_queries=args.max_queries,
                                checkpoint=args.checkpoint, ks=args.ks, backend=args.backend, device=device,
                                text_baselines=args.text_baselines, seed=args.seed,
                                progress=not args.quiet and sys.stderr.isatty())
    text = report_text(report)
    ck = Path(args.checkpoint).stem
    out = Path(args.run) / METRICS / f"retriever-{args.split}-{ck}"
    atomic_write_json(out.with_suffix(".json"), json_safe(report))
    atomic_write_text(out.with_suffix(".txt"), text + "\n")
    return {**report, "written": [f"{out}.json", f"{out}.txt"]}
