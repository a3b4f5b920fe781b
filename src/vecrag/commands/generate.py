"""`vecrag generate BANK --prompt "..." --steps N`: vector-native generation with the dual-path decoder."""

from __future__ import annotations

import argparse
import json
import random
import sys
import textwrap
from pathlib import Path
from typing import Any

from vecrag.errors import VecragError

COMMAND = ("generate",)
HELP = "generate N steps from a prompt: LVM + cascade + SNAP/BLEND/NOVEL, printing bank text per step"
DESCRIPTION = """\
The prompt is split into chunks with the bank's chunker settings and embedded with the bank's encoder (or
--prompt-ids continues from bank chunks). Every step: the LVM predicts the next vector, the query tower
searches the bank (top-K), the candidates are re-ranked (fusion of tower score and cos to the prediction,
plus the lane bonus), and the policy decides SNAP (use the bank vector), BLEND or NOVEL (keep the
prediction). SNAP prints the bank chunk's text; BLEND the text of the chunk it blends with and NOVEL the
nearest bank chunk's, marked (approx). The chunk shown is appended to the context (--feedback emitted
appends the decision's vector).
No step shows a chunk already shown or a prompt chunk (by id or text). The calibrated profiles
(conservative, neutral, creative) need `vecrag calibrate` for this LVM and retriever first. A retrieval
error, timeout or empty shortlist makes the step NOVEL (counted, never a crash). Decoding is deterministic;
--seed fixes the RNGs for models with stochastic parts. At the end the prompt and its continuation are
printed as one passage.

Example: vecrag calibrate banks/wiki-500 --lvm runs/lvm --retriever runs/retriever
         vecrag generate banks/wiki-500 --lvm runs/lvm --retriever runs/retriever \\
         --prompt "The Nile is a major river in Africa." --steps 5
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from vecrag.commands.common import add_cascade_arguments, add_model_arguments

    p.add_argument("bank", metavar="BANK", help="bank directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text (chunked and embedded with the bank's encoder)")
    src.add_argument("--prompt-ids", metavar="ID,ID,...", help="start from these bank chunk ids instead")
    p.add_argument("--steps", type=int, default=5,
                   help="number of steps to generate (at most 10000, and without --allow-repeats the chunks "
                        "the bank has beyond the prompt)")
    p.add_argument("--lane", default=None, help="context lane (must exist in the bank); default: inferred")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (python, numpy, torch)")
    p.add_argument("--json", action="store_true", help="print one JSON document with every step")
    p.add_argument("--telemetry", default=None, metavar="FILE.jsonl", help="append one JSON line per step")
    p.add_argument("--inverter", default=None, metavar="module:Class|NAME",
                   help="optional vector->text inverter for BLEND/NOVEL steps (see vecrag.decode.inverter)")
    p.add_argument("--keep-context-ids", action="store_true",
                   help="leave the context's own bank chunks (bank-id prompts, chunks used by earlier steps) in the "
                        "shortlist; by default they are removed, as in `vecrag eval decode`, so generation moves on")
    p.add_argument("--allow-repeats", action="store_true",
                   help="let a step show a chunk already shown, or a prompt chunk (by id or text); by default "
                        "generation never repeats itself or echoes the prompt")
    p.add_argument("--never-back", action="store_true",
                   help="also drop every chunk of an article the context has visited, up to the furthest one used: "
                        "generation never goes back in an article (measure it with `vecrag eval cascade --never-back`)")
    add_model_arguments(p)
    add_cascade_arguments(p)


def _seed(s: int) -> None:
    import numpy as np
    import torch

    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def check_arguments(args: argparse.Namespace) -> None:
    """Sizes that need no bank: --steps within 1 .. MAX_GENERATE_STEPS, a seed numpy accepts."""
    from vecrag.commands.sizes import MAX_GENERATE_STEPS, check_seed

    if not 1 <= args.steps <= MAX_GENERATE_STEPS:
        raise VecragError(f"--steps must be in 1..{MAX_GENERATE_STEPS}, got {args.steps}", hint="--steps 5")
    check_seed("--seed", args.seed)


def check_steps(args: argparse.Namespace, bank: Any, n_prompt_ids: int) -> None:
    """Without --allow-repeats no chunk is shown twice (nor a prompt chunk): the bank bounds the steps."""
    most = bank.n - n_prompt_ids
    if not args.allow_repeats and args.steps > most:
        raise VecragError(f"--steps {args.steps} is more than the bank can show without repeating a chunk ({bank.n} "
                          f"chunks, {n_prompt_ids} in the prompt: at most {most} steps)", path=bank.path,
                          hint=f"--steps {max(1, min(5, most))}, or --allow-repeats")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from vecrag.bank.store import Bank
    from vecrag.commands import common
    from vecrag.decode.generate import continuation
    from vecrag.decode.inverter import load_inverter
    from vecrag.decode.profiles import check_lane, load_profiles
    from vecrag.decode.prompt import embed_prompt, parse_ids, split_prompt
    from vecrag.fsutil import append_jsonl

    check_arguments(args)
    common.setup_runtime(args)
    _seed(args.seed)
    bank = Bank.open(args.bank)
    common.check_sizes(args, bank)
    profiles = load_profiles(args.profiles)
    bank_lanes = sorted({str(x) for x in bank.lanes if x})
    if args.lane:
        check_lane(args.lane, bank_lanes, profiles)
    inverter = load_inverter(args.inverter, bank.encoder)
    ids: list[int] | None = None
    if args.prompt_ids:
        ids = parse_ids(bank, args.prompt_ids)
        prompt_vecs, chunks, how = bank.vectors_f32(np.asarray(ids)), [bank.texts[i] for i in ids], "bank ids"
    else:
        chunks, how = split_prompt(bank, args.prompt)
        prompt_vecs = embed_prompt(bank, chunks, args.device)
    check_steps(args, bank, len(ids or []))
    # the library's vecrag.Generator builds its decoder with the same function
    lvm, tower, setup, dec = common.build_decoder(bank, args, profiles=profiles, inverter=inverter)
    cfg = setup.cascade
    tele = Path(args.telemetry) if args.telemetry else None
    if tele:
        tele.parent.mkdir(parents=True, exist_ok=True)
    steps = []
    if not args.json:
        p = setup.policies.default
        x, how_x = ("c", "") if not p.margin_weight else ("x", f", x = c + {p.margin_weight:g} * margin")
        bands = (f"force {p.force}" if p.force else
                 f"SNAP at {x}>={p.tau_snap:.3f}, NOVEL at {x}<={p.tau_novel:.3f}{how_x}")
        source = f"calibration {setup.calibration}" if setup.calibration else "no calibration"
        print(f"prompt: {len(chunks)} chunk(s) ({how}); lvm={lvm.name} retriever={tower.name}\n"
              f"profile={args.profile} ({bands}; {source}) K={cfg.K} k={cfg.k} w_lvm={cfg.w_lvm:g} "
              f"lane_lambda={cfg.lane_lambda:g} w_topic={cfg.w_topic:g} feedback={setup.feedback} "
              f"timeout={args.timeout_ms or 'none'} ms")
    try:
        for st in dec.generate(list(prompt_vecs), args.steps, ids, chunks):
            rec = st.as_dict()
            steps.append(rec)
            if tele:
                append_jsonl(tele, {"kind": "step", "bank": str(bank.path), "profile": args.profile, **rec})
            if not args.json:
                c = "  n/a " if rec["c"] is None else f"{rec['c']:.4f}"
                if rec.get("x") is not None and abs(rec["x"] - (rec["c"] or 0.0)) > 1e-9:
                    c += f" x={rec['x']:.4f}"
                mark = " (approx)" if st.approx else ""
                why = f" [fallback: {rec['fallback']}]" if rec["fallback"] else ""
                print(f"[{st.step + 1:>3}] {st.decision.kind:<5} c={c} lane={st.lane or '-'} "
                      f"id={st.text_id} {rec['latency_ms']['total']:.1f} ms{why}\n      "
                      f"{st.text if st.text is not None else '(no bank text: retrieval failed)'}{mark}")
                if st.inverted is not None:
                    print(f"      inverted: {st.inverted}")
                sys.stdout.flush()
    finally:
        dec.close()
    summary = {"fallbacks": dec.fallbacks, "decisions": {k: sum(s["decision"] == k for s in steps)
                                                          for k in ("SNAP", "BLEND", "NOVEL")}}
    if args.json:
        print(json.dumps({"bank": str(bank.path), "prompt_chunks": chunks, "prompt_split": how, "lvm": lvm.name,
                          "retriever": tower.name, "profile": args.profile, "lane": args.lane,
                          "decoder": setup.describe(), "cascade": vars(cfg), "steps": steps,
                          "continuation": continuation(steps), **summary}, indent=2))
    else:
        print(f"decisions {summary['decisions']}; retrieval fallbacks {summary['fallbacks']}")
        print("\n" + "\n".join(textwrap.wrap(" ".join(chunks), 100)))
        print("\n".join(textwrap.wrap(continuation(steps), 100, initial_indent="  >> ", subsequent_indent="     ")))
        print("(the prompt, then the continuation; [~...] marks text shown for a BLEND or NOVEL step)")
    return 0

