"""Generation rollouts, before and after calibrated decoding, side by side on the same prompts (not a test).

Rows, every one on the same held-out prompts (first P chunks of each article of the split, S steps):

- ``before``: the decoder as it shipped before calibration: absolute thresholds 0.92 / 0.85 (now the ``gtr-t5``
  profile), cascade weights w_lvm 1.0 and lane bonus 0.05, the decision's vector fed back, only the context
  window's bank ids and the near-duplicate rule against repeats, no stall guard;
- ``neutral`` / ``conservative`` / ``creative``: the calibrated profiles with the calibration's cascade and
  feedback, the no-repeat rule on (what `vecrag generate` does now);
- the greedy retrieval-only baselines and the LVM alone (as `vecrag eval generate` prints them);
- after the table, the retrieval ceiling: the S best chunks for the prompt alone (tower, ewma, the LVM's prediction
  as the query), prompt chunks excluded, shown without any feedback: the coverage no decoding policy over these
  models is likely to pass.

Needs a calibration (`vecrag calibrate BANK --lvm RUN --retriever RUN`). Usage::

    python benchmarks/generation_bench.py BANK --lvm RUN --retriever RUN [--split test] [--steps 8]
"""

from __future__ import annotations

import argparse

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bank")
    ap.add_argument("--lvm", required=True)
    ap.add_argument("--retriever", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--prompt-chunks", dest="P", type=int, default=3)
    ap.add_argument("--steps", dest="S", type=int, default=8)
    ap.add_argument("--max-articles", type=int, default=0)
    args = ap.parse_args()

    from vecrag.bank.store import Bank
    from vecrag.decode.baselines import baseline_generators
    from vecrag.decode.calibration import calibrated_cascade, calibrated_feedback, load_calibration
    from vecrag.decode.cascade import CascadeConfig
    from vecrag.decode.generate import Decoder
    from vecrag.decode.predictors import parse_predictor
    from vecrag.decode.profiles import load_profiles
    from vecrag.eval.rollout_eval import format_rollouts, make_prompts, rollout_articles, run_rollouts
    from vecrag.index.load import open_index
    from vecrag.runtime import set_threads

    set_threads(None, None)
    bank = Bank.open(args.bank)
    lvm = parse_predictor(args.lvm, "lvm", bank=bank)
    tower = parse_predictor(args.retriever, "retriever", bank=bank)
    cal = load_calibration(bank, args.lvm, args.retriever, required=True, why="this benchmark needs")
    index = open_index(bank, backend="auto", device="cpu")
    prompts = make_prompts(bank, rollout_articles(bank, args.split, args.P, args.S, max_articles=args.max_articles),
                           args.P, args.S)
    profiles = load_profiles()
    lanes = sorted({str(x) for x in bank.lanes if x})
    before = Decoder.for_bank(bank, index, lvm, tower, profiles.policy_set("gtr-t5", lanes),
                              CascadeConfig(K=500, k=10, w_lvm=1.0, lane_lambda=0.05, timeout_ms=None),
                              no_repeat=False, feedback="emitted", stall=None)
    gens: dict[str, Decoder | None] = {"before (gtr-t5 bands, w_lvm 1, no rule)": before}
    for name in ("neutral", "conservative", "creative"):
        pol = profiles.policy_set(name, lanes, cal)
        gens[f"decoder:{name}"] = Decoder.for_bank(bank, index, lvm, tower, pol,
                                                   calibrated_cascade(cal, K=pol.default.K),
                                                   feedback=calibrated_feedback(cal))
    gens.update(baseline_generators(bank, index, lvm, tower))
    gens["true continuation"] = None
    try:
        rows = run_rollouts(bank, gens, prompts, args.S)
    finally:
        for g in gens.values():
            if g is not None:
                g.close()
    print(format_rollouts({"bank": str(bank.path), "split": args.split, "n_articles": len(prompts), "P": args.P,
                           "S": args.S, "prompts": "bank ids", "lvm": lvm.name, "retriever": tower.name,
                           "hit_rules": "same text counts", "rows": rows}))
    from vecrag.scoring.predictors import HeuristicPredictor

    print(f"\nretrieval ceiling: the {args.S} best chunks for the prompt alone, no feedback (coverage, 95 % CI):")
    for name, pred in (("tower", tower), ("ewma query", HeuristicPredictor("ewma", 0.5, tower.context_len)),
                       ("LVM prediction", lvm)):
        m, h = one_shot(bank, index, pred, prompts, args.S)
        print(f"  {name:<16}{100 * m:6.1f} % (+-{100 * h:.1f})")


def one_shot(bank, index, pred, prompts, S: int) -> tuple[float, float]:
    """Coverage (mean, 95 % half-width over articles) of the S best chunks for each prompt alone."""
    import numpy as np

    from vecrag.decode.generate import window
    from vecrag.eval.rollout_eval import score_rollout

    tg, covs = bank.text_group, []
    for pr in prompts:
        ctx, mask = window(list(pr.vectors), pred.context_len, bank.dim)
        _, ids = index.search(pred(ctx, mask), S + 4 * len(pr.vectors) + 64)
        banned, out = set(tg[pr.ids].tolist()), []
        for i in ids[0]:
            if i >= 0 and int(tg[i]) not in banned:
                out.append(int(i))
                banned.add(int(tg[i]))
            if len(out) == S:
                break
        covs.append(score_rollout(bank, pr, out, bank.vectors_f32(np.asarray(out)))["coverage"][0])
    c = np.asarray(covs)
    return float(c.mean()), float(1.96 * c.std(ddof=1) / np.sqrt(len(c))) if len(c) > 1 else float("nan")


if __name__ == "__main__":
    main()
