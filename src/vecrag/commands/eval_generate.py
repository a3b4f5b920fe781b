"""`vecrag eval generate BANK --lvm RUN --retriever RUN --split test`: generation rollouts, side by side."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vecrag.errors import VecragError

COMMAND = ("eval", "generate")
HELP = "rollouts from held-out prompts: coverage, hit, forward, repeat, echo, cosine by step, vs greedy baselines"
DESCRIPTION = """\
For every held-out article with at least P+S chunks (or a seeded sample, --max-articles), the prompt is its
first P chunks (as bank ids, or with --text-prompts their text re-chunked and re-embedded) and S steps are
generated with exactly the decoder `vecrag generate` uses (one row per --profile). In the same table, on the
same prompts: greedy retrieval-only generators (the ewma heuristic and the trained tower as the query, always
SNAP to the best chunk not yet used), the LVM alone (NOVEL every step) and the true continuation.

Per step: hit (the shown chunk is the true one at that step; same text counts), forward (in the prompt's
article, after everything used so far), repeat (shown earlier in the rollout), echo (a prompt chunk, by id or
text), cosine of the emitted vector to the truth, and collapse (cosine between consecutive emitted vectors);
per rollout: coverage (share of the true next S chunks shown). 95 % intervals over articles.
Writes generate_eval-SPLIT.json atomically.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from vecrag.commands.common import add_cascade_arguments, add_model_arguments

    p.add_argument("bank", metavar="BANK", help="bank directory")
    add_model_arguments(p, lvm_default=None, retriever_default=None)
    add_cascade_arguments(p, timeout_default=0.0, multi_profile=True)
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="article split to evaluate")
    p.add_argument("--prompt-chunks", dest="P", type=int, default=3, metavar="P", help="prompt length in chunks")
    p.add_argument("--steps", dest="S", type=int, default=8, metavar="S", help="steps generated per rollout")
    p.add_argument("--max-articles", type=int, default=0, metavar="N",
                   help="a seeded sample of N articles (0 = every article with >= P+S chunks)")
    p.add_argument("--seed", type=int, default=0, help="seed of the article sample")
    p.add_argument("--text-prompts", action="store_true",
                   help="prompt with the chunks' text, re-chunked and re-embedded (prompt echo by text is measured)")
    p.add_argument("--no-baselines", action="store_true", help="only the decoder rows (no greedy / LVM / truth)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write the JSON (default: the LVM run's metrics/, else the retriever run's, "
                        "else BANK/eval/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")


def _check(args: argparse.Namespace, bank: Any) -> None:
    """A rollout is read against an article's own chunks: P + S is bounded by the bank's longest article."""
    from vecrag.commands.sizes import longest_article

    if args.P < 1 or args.S < 1:
        raise VecragError(f"--prompt-chunks and --steps must be >= 1, got {args.P} and {args.S}")
    most = longest_article(bank)
    if args.P + args.S > most:
        raise VecragError(f"--prompt-chunks + --steps = {args.P + args.S} is more than the bank's longest article "
                          f"({most} chunks)", path=bank.path,
                          hint=f"use --prompt-chunks + --steps <= {most}")


def run(args: argparse.Namespace) -> int:
    from vecrag.commands.common import print_report
    from vecrag.eval.rollout_eval import format_rollouts

    return print_report(evaluate(args), args, format_rollouts)


def evaluate(args: argparse.Namespace) -> dict:
    """Rollouts of every generator on the split's prompts.

    Returns the report the command prints, with ``written`` (the files it wrote); ``vecrag.evaluate`` calls this.
    """
    from vecrag.bank.store import Bank
    from vecrag.commands import common
    from vecrag.decode.baselines import baseline_generators
    from vecrag.decode.generate import Decoder
    from vecrag.decode.prompt import prompt_embedder
    from vecrag.eval.rollout_eval import make_prompts, rollout_articles, run_rollouts
    from vecrag.fsutil import atomic_write_json

    common.setup_runtime(args)
    bank = Bank.open(args.bank)
    _check(args, bank)
    common.check_sizes(args, bank)
    lvm, tower = common.load_predictors(bank, args)
    starts = rollout_articles(bank, args.split, args.P, args.S, max_articles=args.max_articles, seed=args.seed)
    if not len(starts):
        raise VecragError(f"the {args.split} split has no article with >= {args.P + args.S} chunks", path=bank.path,
                          hint="use a bigger bank, another --split, or fewer --prompt-chunks / --steps")
    embed = prompt_embedder(bank, args.device) if args.text_prompts else None
    prompts = make_prompts(bank, starts, args.P, args.S, embed)
    index = common.open_search(bank, args)
    gens: dict[str, Decoder | None] = {}
    setups = {}
    for profile in args.profiles_list or ["neutral"]:
        setup = common.decoder_setup(bank, args, lvm, tower, profile=profile)
        setups[profile] = setup.describe()
        gens[f"decoder:{profile}"] = Decoder.for_bank(bank, index, lvm, tower, setup.policies, setup.cascade,
                                                      feedback=setup.feedback)
    if not args.no_baselines:
        gens.update(baseline_generators(bank, index, lvm, tower))
        gens["true continuation"] = None
    try:
        rows = run_rollouts(bank, gens, prompts, args.S, progress=not args.quiet and sys.stderr.isatty())
    finally:
        for g in gens.values():
            if g is not None:
                g.close()
    rep = {"bank": str(bank.path), "split": args.split, "n_articles": len(prompts), "P": args.P, "S": args.S,
           "prompts": "text, re-chunked and re-embedded" if args.text_prompts else "bank ids",
           "lvm": lvm.name, "retriever": tower.name, "decoders": setups,
           "hit_rules": "a chunk with the true chunk's text counts as the true chunk", "rows": rows}
    path = common.out_dir(args, bank) / f"generate_eval-{args.split}{'-text' if args.text_prompts else ''}.json"
    atomic_write_json(path, rep)
    return {**rep, "written": [str(path)]}
