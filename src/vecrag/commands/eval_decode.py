"""`vecrag eval decode BANK --lvm RUN --retriever RUN --split test --profile P`: teacher-forced decoding."""

from __future__ import annotations

import argparse
import sys

COMMAND = ("eval", "decode")
HELP = "teacher-forced SNAP/BLEND/NOVEL mix, SNAP precision, cosine to the truth vs v_hat, oracle, sweep"
DESCRIPTION = """\
Teacher-forced on held-out articles against the FULL bank: % SNAP / BLEND / NOVEL overall and per lane,
SNAP precision (snapped id is the true next chunk or has its text), mean cosine of the emitted vector to
the true next vector against the LVM prediction alone (per decision kind: where SNAP/BLEND help or hurt),
an oracle-snap upper bound (snap to the true next chunk whenever it is in the shortlist), and a sweep over
tau_snap x tau_novel. Writes decode_eval-SPLIT-PROFILE.json, decode_sweep-SPLIT-PROFILE.txt and .png.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from vecrag.commands.common import add_cascade_arguments, add_eval_arguments, add_model_arguments

    p.add_argument("bank", metavar="BANK", help="bank directory")
    add_model_arguments(p, lvm_default=None, retriever_default=None)
    add_eval_arguments(p)
    add_cascade_arguments(p, timeout_default=0.0)
    p.add_argument("--keep-context-ids", action="store_true",
                   help="leave the context's own chunks in the shortlist (default: removed, the section 5 hit "
                        "rule; kept, only the near-duplicate rule stops snapping back onto them)")
    p.add_argument("--never-back", action="store_true",
                   help="also remove the article's chunks before the context (`vecrag generate --never-back`)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")


def run(args: argparse.Namespace) -> int:
    from vecrag.commands.common import print_report
    from vecrag.eval.decode_eval import format_decode

    return print_report(evaluate(args), args, format_decode)


def evaluate(args: argparse.Namespace) -> dict:
    """The teacher-forced decision mix, SNAP precision and cosines on the split.

    Returns the report the command prints, with ``written`` (the files it wrote); ``vecrag.evaluate`` calls this.
    """
    from vecrag.bank.store import Bank
    from vecrag.commands import common
    from vecrag.decode.profiles import load_profiles
    from vecrag.eval.decode_eval import collect, decode_report, plot_sweep, sweep_table
    from vecrag.fsutil import atomic_write_json, atomic_write_text

    common.setup_runtime(args)
    bank = Bank.open(args.bank)
    common.check_sizes(args, bank)
    profiles = load_profiles(args.profiles)
    lvm, tower = common.load_predictors(bank, args)
    setup = common.decoder_setup(bank, args, lvm, tower, profiles=profiles)
    policies, cfg = setup.policies, setup.cascade
    samples = common.eval_samples(bank, args)
    index = common.open_search(bank, args)
    arrays, fallbacks = collect(bank, samples, lvm, tower, index, policies, cfg,
                                exclude_context=not args.keep_context_ids, never_back=args.never_back,
                                progress=not args.quiet and sys.stderr.isatty())
    meta = {"bank": str(bank.path), "split": args.split, "profile": args.profile, "lvm": lvm.name,
            "retriever": tower.name, "K": cfg.K, "k": cfg.k,
            "fusion": {"w_tower": cfg.w_tower, "w_lvm": cfg.w_lvm, "lane_lambda": cfg.lane_lambda},
            "calibration": setup.calibration,
            "lane_policies": {ln: p.as_dict() for ln, p in sorted(policies.by_lane.items())},
            "context_ids": "kept in the shortlist" if args.keep_context_ids else "removed from the shortlist",
            "never_back": args.never_back,
            "hit_rules": "SNAP precision and oracle: the true next id or a chunk with its text"}
    rep = decode_report(arrays, fallbacks, policy=policies.default, meta=meta)
    d = common.out_dir(args, bank)
    stem = f"{args.split}-{args.profile}" + ("-never-back" if args.never_back else "")
    atomic_write_json(d / f"decode_eval-{stem}.json", rep)
    atomic_write_text(d / f"decode_sweep-{stem}.txt", sweep_table(rep["sweep"]))
    written = [f"{d}/decode_eval-{stem}.json", f"{d}/decode_sweep-{stem}.txt"]
    if rep["sweep"]:
        plot_sweep(rep, d / f"decode_sweep-{stem}.png")
        written.append(f"{d}/decode_sweep-{stem}.png")
    return {**rep, "written": written}
