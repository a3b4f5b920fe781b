"""`vecrag eval lvm RUN --split test`: the trained LVM next to copy-last, mean, ewma and ridge, same queries."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

COMMAND = ("eval", "lvm")
HELP = "evaluate a trained LVM against copy-last / mean / ewma / ridge baselines (cosine, in-bank recall)"
DESCRIPTION = """\
For every target chunk of --split with at least one earlier chunk in its article (held-out ARTICLES), predict
the next vector from the previous L context vectors with the trained model and with four baselines measured in
the same run on the same queries: copy-last, mean of context, exponentially weighted context, and a ridge
(linear least-squares) map from the flattened context fitted on the TRAIN split.

Reports mean cosine to the true next vector (95 % normal CI) and its median; in-bank Recall@{1,5,10,100,500}
(95 % Wilson CIs), MRR@10 and median rank with the prediction as the query against the FULL bank (exact
search; the context's own chunk ids are excluded; a chunk with the target's exact text counts as a hit);
contrastive accuracy among in-batch targets (shuffled batches of --contrast-batch); the copy score (max cosine
of the prediction to any context vector); cosine and Recall@10 per context-length bucket (1, 2-4, 5-9, 10+).
--horizon H adds a rollout: predictions are fed back into the context and the cosine to the true chunk is
reported at each step 1..H. Writes JSON to RUN/metrics/lvm-<split>-<checkpoint>.json (or --out).

Example: vecrag eval lvm runs/lvm-gru --split test --horizon 5
"""


def _lambda(s: str) -> str | float:
    if s == "auto":
        return s
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {s!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number >= 0, got {s!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory of `vecrag train lvm`")
    p.add_argument("--bank", default=None, help="bank directory (default: the bank the run was trained on)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="article split")
    p.add_argument("--checkpoint", default="best", help="best, last, swa, or a file name in RUN/checkpoints")
    p.add_argument("--horizon", type=int, default=0, help="multi-step rollout length (0 = off)")
    p.add_argument("--max-queries", type=int, default=None, help="deterministic subset of the split's targets")
    p.add_argument("--contrast-batch", type=int, default=256, help="batch size of the contrastive accuracy")
    p.add_argument("--ridge-lambda", type=_lambda, default="auto",
                   help="L2 penalty of the ridge baseline; auto: the best of 0.1/1/10/100/1000 on the val split")
    p.add_argument("--ridge-max-train", type=int, default=200_000, help="train samples used to fit ridge")
    p.add_argument("--no-ridge", action="store_true", help="skip the ridge baseline")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--out", default=None, help="JSON output (default RUN/metrics/lvm-<split>-<checkpoint>.json)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def format_report(res: dict[str, Any]) -> str:
    from vecrag.scoring.metrics import format_table

    keys = ("cos", "cos_median", "R@1", "R@5", "R@10", "R@100", "R@500", "MRR@10", "contrast_acc", "copy")
    lines = [f"{res['n_queries']} queries, split {res['split']}, context {res['context']}, bank {res['bank']} "
             f"({res['hit_rules']})", format_table(res["rows"], keys), "",
             "95 % CIs: " + "; ".join(f"{n}: cos [{r['cos_ci'][0]:.4f}, {r['cos_ci'][1]:.4f}], R@10 "
                                      f"[{100 * r['R@10_ci'][0]:.1f}, {100 * r['R@10_ci'][1]:.1f}] %"
                                      for n, r in res["rows"].items())]
    if res.get("ridge_lambda") is not None:
        lines.append(f"ridge: L2 penalty {res['ridge_lambda']:g} (fitted on train, penalty chosen on val)")
    lines.append("")
    buckets = {f"{n} [{b}] n={v['n']}": {"cos": v["cos"], "R@10": v["R@10"]}
               for n, r in res["rows"].items() for b, v in r["buckets"].items()}
    lines += ["per context-length bucket:", format_table(buckets, ("cos", "R@10"))]
    if "rollout" in res:
        h = len(next(iter(res["rollout"].values()))["cos"])
        rows = {n: {f"step{i + 1}": c for i, c in enumerate(r["cos"])} for n, r in res["rollout"].items()}
        n = next(iter(res["rollout"].values()))["n"]
        lines += ["", f"rollout cosine per step ({n} samples with {h} more chunks in their article):",
                  format_table(rows, tuple(f"step{i + 1}" for i in range(h)))]
    return "\n".join(lines)


def check_arguments(args: argparse.Namespace) -> None:
    """Sizes that need no bank (``--horizon`` is bounded by the bank's articles once it is open)."""
    from vecrag.commands.sizes import MAX_CONTRAST_BATCH, at_least, check_threads
    from vecrag.errors import VecragError

    at_least("--horizon", args.horizon, 0, hint="--horizon 5, or 0 for no rollout")
    at_least("--max-queries", args.max_queries, 1, hint="leave it out to evaluate every target")
    at_least("--contrast-batch", args.contrast_batch, 1, hint="--contrast-batch 256")
    if args.contrast_batch > MAX_CONTRAST_BATCH:
        raise VecragError(f"--contrast-batch {args.contrast_batch} is above the cap of {MAX_CONTRAST_BATCH} (memory "
                          f"grows with its square)", hint="--contrast-batch 256")
    at_least("--ridge-max-train", args.ridge_max_train, 1, hint="--ridge-max-train 200000, or --no-ridge")
    args.threads = check_threads(args.threads)


def check_horizon(horizon: int, bank: Any) -> None:
    """A rollout of ``horizon`` steps needs a target (at position >= 1) followed by ``horizon - 1`` more chunks."""
    from vecrag.commands.sizes import longest_article
    from vecrag.errors import VecragError

    most = longest_article(bank) - 1
    if horizon > max(most, 0):
        raise VecragError(f"--horizon {horizon} is longer than any article continues (the longest has "
                          f"{most + 1} chunks: at most {max(most, 0)} steps after its first chunk)",
                          path=bank.path, hint=f"--horizon {max(1, min(5, most))}" if most >= 1 else "--horizon 0")


def run(args: argparse.Namespace) -> int:
    res = evaluate(args)
    print(format_report(res))
    print(f"\nwrote {res['written'][0]}")
    return 0


def evaluate(args: argparse.Namespace) -> dict:
    """The LVM against copy-last / mean / ewma / ridge on the split: the report the command prints, with
    ``written`` (the files it wrote). ``vecrag.evaluate`` calls this."""
    from vecrag.bank.sequences import make_samples
    from vecrag.bank.store import Bank
    from vecrag.errors import VecragError
    from vecrag.eval.lvm_eval import RIDGE_LAMBDAS, default_predictors, fit_ridge
    from vecrag.eval.lvm_eval import evaluate as evaluate_lvm
    from vecrag.fsutil import atomic_write_json, json_safe
    from vecrag.runs.layout import METRICS
    from vecrag.runs.load import load_lvm
    from vecrag.runtime import pick_device, report_openmp, set_threads

    check_arguments(args)
    set_threads(args.threads)
    report_openmp()
    device = pick_device(args.device)
    t0 = time.perf_counter()
    model, cfg = load_lvm(args.run, args.checkpoint, device)
    bank = Bank.open(args.bank or cfg.bank)
    enc = getattr(model, "encoder", None) or {}
    if enc:
        bank.check_encoder(enc["name"], int(enc["dim"]))
    check_horizon(args.horizon, bank)
    L = cfg.train.context
    samples = make_samples(bank, args.split, min_context=1, max_samples=args.max_queries, seed=0)
    if len(samples) == 0:
        raise VecragError(f"the {args.split} split has no article with 2 or more chunks", path=bank.path)
    lam = RIDGE_LAMBDAS if args.ridge_lambda == "auto" else args.ridge_lambda
    ridge = None if args.no_ridge else fit_ridge(bank, L, lam=lam, max_samples=args.ridge_max_train, device=device)
    res = evaluate_lvm(bank, samples, L, default_predictors(model, cfg, ridge), horizon=args.horizon, device=device,
                   contrast_batch=args.contrast_batch)
    res.update({"split": args.split, "bank": str(bank.path), "run": str(args.run), "checkpoint": args.checkpoint,
                "seconds": round(time.perf_counter() - t0, 2),
                "ridge_lambda": ridge.lam if ridge is not None else None})
    out = Path(args.out) if args.out else Path(args.run) / METRICS / f"lvm-{args.split}-{args.checkpoint}.json"
    atomic_write_json(out, json_safe(res))
    return {**res, "written": [str(out)]}
