"""`vecrag calibrate BANK --lvm RUN --retriever RUN`: decoding thresholds and cascade weights from VAL."""

from __future__ import annotations

import argparse
import json
import sys

COMMAND = ("calibrate",)
HELP = "measure SNAP precision and the cascade's fusion weights on VAL; the calibrated profiles read them"
DESCRIPTION = """\
The profiles conservative / neutral / creative state an intent (the SNAP precision to expect, the share of
steps left NOVEL), not cosines, so that they mean the same on any encoder. This command measures, on the VAL
articles against the full bank: (1) the cascade's fusion weights (w_lvm, lane bonus) on a grid that holds the
first stage alone, taking a point only when its paired gain in Hit@10 exceeds 1.96 standard errors, so the
chosen cascade is never below its first stage on VAL; (2) with that cascade, every step's cosine c between the
LVM's prediction and its candidate, the cascade's score margin, and whether the candidate is the true next
chunk, and the weight w of the margin in the bands' value x = c + w * margin that best ranks correct
candidates; (3) BLEND: whether it mixes the prediction with the candidate alone or with the shortlist averaged by
softmax(score / blend_tau), and its weight per fifth of the steps by x, both for the best cosine of the emitted
vector to the true next chunk; (4) rollouts from VAL prompts at a few (topic weight, feedback) settings. It writes
calibration.json into the LVM's run directory (else the retriever's; for two heuristics into BANK/eval/),
where `vecrag generate`, `eval decode`, `eval generate`, `eval cascade` and `serve` find it.
Example: vecrag calibrate banks/wiki-300 --lvm runs/lvm --retriever runs/retriever
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from vecrag.commands.common import add_model_arguments

    p.add_argument("bank", metavar="BANK", help="bank directory")
    add_model_arguments(p)
    p.add_argument("--split", default="val", choices=("train", "val", "test"),
                   help="articles to calibrate on (default val; never test)")
    p.add_argument("--max-samples", type=int, default=5000, metavar="N",
                   help="a deterministic subset of N steps (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset")
    p.add_argument("--min-context", type=int, default=1, help="steps need at least this many context chunks")
    p.add_argument("--K", dest="K", type=int, default=500,
                   help="tower shortlist size (at most 4096, clamped to the bank's size)")
    p.add_argument("--k", dest="k", type=int, default=10, help="final shortlist size")
    p.add_argument("--profiles", default=None, metavar="FILE.yaml",
                   help="decode profiles whose thresholds are printed (default: the shipped presets/decode.yaml)")
    p.add_argument("--max-articles", type=int, default=200, metavar="N",
                   help="VAL articles for the generation rollouts (a seeded sample; 0 = all)")
    p.add_argument("--pick", default=None, choices=("cos", "score"),
                   help="the candidate a step SNAPs to or BLENDs with, measured with and stored for the profiles: "
                        "the one nearest the LVM's prediction (cos) or the cascade's best-scored (score); "
                        "default: the decoder's")
    p.add_argument("--no-rollouts", action="store_true", help="skip the generation rollouts (topic weight 0, shown)")
    p.add_argument("--out", default=None, metavar="FILE.json",
                   help="where to write it (default: where the commands that use it look)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")


def run(args: argparse.Namespace) -> int:
    from vecrag.eval.calibrate import format_calibration

    cal = evaluate(args)
    if args.json:
        print(json.dumps({k: v for k, v in cal.items() if k != "samples"}, indent=2))
    else:
        print(format_calibration(cal))
        print(f"wrote {cal['written'][0]}")
    return 0


def evaluate(args: argparse.Namespace) -> dict:
    """The calibration measured on the split (written where the decoding commands look).

    Returns the report the command prints, with ``written`` (the files it wrote); ``vecrag.evaluate`` calls this.
    """
    from pathlib import Path

    from vecrag.bank.store import Bank
    from vecrag.commands import common
    from vecrag.decode.calibration import calibration_path
    from vecrag.decode.profiles import load_profiles
    from vecrag.errors import VecragError
    from vecrag.eval.calibrate import run_calibration
    from vecrag.fsutil import atomic_write_json

    common.setup_runtime(args)
    bank = Bank.open(args.bank)
    common.check_sizes(args, bank, K_default=500)  # a small bank: the shortlist is the whole bank
    if not 1 <= args.k <= args.K:
        raise VecragError(f"need 1 <= --k ({args.k}) <= --K ({args.K}); the bank has {bank.n} chunks")
    profiles = load_profiles(args.profiles)
    lvm, tower = common.load_predictors(bank, args)
    samples = common.eval_samples(bank, args)
    index = common.open_search(bank, args)
    cal = run_calibration(bank, samples, lvm, tower, index, lvm_spec=args.lvm, retriever_spec=args.retriever,
                          profiles=profiles, K=args.K, k=args.k, rollouts=not args.no_rollouts, pick=args.pick,
                          max_articles=args.max_articles, progress=not args.quiet and sys.stderr.isatty())
    path = Path(args.out) if args.out else calibration_path(bank, args.lvm, args.retriever)
    atomic_write_json(path, cal)
    return {**cal, "written": [str(path)]}
