"""`vecrag eval cascade BANK --lvm RUN --retriever RUN --split test`: Hit@k / MRR@10 of every cascade stage."""

from __future__ import annotations

import argparse
import sys

COMMAND = ("eval", "cascade")
HELP = "Hit@{1,5,10} and MRR@10 of each cascade stage and the full cascade, beside the heuristic baselines"
DESCRIPTION = """\
On held-out articles, against the FULL bank, with the shared hit rules (context ids excluded, same text =
hit), on the same queries: heuristic baselines (last, ewma), the query tower alone (and its R@K, the
ceiling of any re-rank), the LVM prediction as the query, the tower top-K re-ranked by cos(LVM, candidate)
alone, by the fusion w_tower * tower score + w_lvm * cos(LVM, candidate), by the lane bonus alone, and the
full cascade (fusion + lane). The context's lane is predicted from the context vectors, as `vecrag generate`
does for a prompt (the bank's lane prototypes, else train-split lane centroids); the row
tower>lane(article) uses the article's own lane label instead, an upper bound (for lanes built from vectors
that label saw the target chunk). Writes cascade_eval-SPLIT.json atomically.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from vecrag.commands.common import add_eval_arguments, add_fusion_arguments, add_model_arguments

    p.add_argument("bank", metavar="BANK", help="bank directory")
    add_model_arguments(p, lvm_default=None, retriever_default=None)
    add_eval_arguments(p)
    add_fusion_arguments(p, K_default=500)
    p.add_argument("--w-lvm-grid", type=_grid, default=(), metavar="W1,W2,...",
                   help="also report tower>fused at each of these LVM weights (one search: cheap); choose the "
                        "weight on --split val, report it on test")
    p.add_argument("--never-back", action="store_true",
                   help="also drop the continued article's chunks before the context from every row (a "
                        "continuation never goes back; the default drops only the context's own chunks)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")


def _grid(s: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from e
    if any(w < 0 for w in out):
        raise argparse.ArgumentTypeError(f"LVM weights must be >= 0, got {s!r}")
    return out


def run(args: argparse.Namespace) -> int:
    from vecrag.commands.common import print_report
    from vecrag.eval.cascade_eval import format_cascade

    return print_report(evaluate(args), args, format_cascade)


def evaluate(args: argparse.Namespace) -> dict:
    """Hit@k of every cascade stage on the split.

    Returns the report the command prints, with ``written`` (the files it wrote); ``vecrag.evaluate`` calls this.
    """
    from vecrag.bank.store import Bank
    from vecrag.commands import common
    from vecrag.eval.cascade_eval import run_cascade_eval
    from vecrag.fsutil import atomic_write_json

    common.setup_runtime(args)
    bank = Bank.open(args.bank)
    common.check_sizes(args, bank, K_default=500)
    lvm, tower = common.load_predictors(bank, args)
    samples = common.eval_samples(bank, args)
    index = common.open_search(bank, args)
    from vecrag.decode.calibration import calibrated_cascade

    cal = common.load_calibration_for(bank, args, required=False)
    cfg = calibrated_cascade(cal, K=args.K, k=args.k, w_tower=args.w_tower, w_lvm=args.w_lvm,
                             lane_lambda=args.lane_lambda)
    rep = run_cascade_eval(bank, samples, lvm, tower, index, K=args.K, k=args.k, w_tower=cfg.w_tower,
                           w_lvm=cfg.w_lvm, lane_lambda=cfg.lane_lambda, w_lvm_grid=args.w_lvm_grid,
                           never_back=args.never_back, progress=not args.quiet and sys.stderr.isatty())
    rep["fusion_source"] = ("explicit flags" if args.w_lvm is not None and args.lane_lambda is not None else
                            f"calibration {cal['path']} (chosen on {cal['split']})" if cal else
                            "no calibration: the first stage alone (run `vecrag calibrate`)")
    rep["index"] = index.describe() if hasattr(index, "describe") else repr(index)
    path = common.out_dir(args, bank) / f"cascade_eval-{args.split}{'-never-back' if args.never_back else ''}.json"
    atomic_write_json(path, rep)
    return {**rep, "written": [str(path)]}
