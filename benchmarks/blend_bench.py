"""BLEND over the shortlist against BLEND with the candidate alone, paired on the same steps and prompts (not a test).

Two decoders from one calibration: ``neutral`` as calibrated (its ``blend_tau`` and weights), and ``n* alone``, the
same profile with ``blend_tau`` 0 and the weights the calibration fitted for it (its grid's first row). Printed:

1. teacher-forced (as `vecrag eval decode`): the mean cosine of the emitted vector to the true next chunk, minus the
   LVM prediction's, with a 95 % interval over steps, and the paired difference of the two decoders;
2. rollouts (as `vecrag eval generate`) from every article of each split with prompts of each length: coverage of
   the true continuation for both decoders and the greedy tower, each against neutral, paired over rollouts
   (more prompts than one `eval generate` table: each article is rolled out once per prompt length and split).

Needs a calibration (`vecrag calibrate BANK --lvm RUN --retriever RUN`). Usage::

    python benchmarks/blend_bench.py BANK --lvm RUN --retriever RUN [--splits val,test] [--prompt-chunks 3,4,5,6]
"""

from __future__ import annotations

import argparse

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP


def ci(d):
    import numpy as np

    return float(d.mean()), float(1.96 * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bank")
    ap.add_argument("--lvm", required=True)
    ap.add_argument("--retriever", required=True)
    ap.add_argument("--splits", default="val,test")
    ap.add_argument("--prompt-chunks", default="3,4,5,6", help="prompt lengths, each rolled out from every article")
    ap.add_argument("--steps", dest="S", type=int, default=8)
    ap.add_argument("--max-samples", type=int, default=5000, help="teacher-forced steps per split (0 = all)")
    ap.add_argument("--max-articles", type=int, default=0, help="articles per split and prompt length (0 = all)")
    args = ap.parse_args()

    import numpy as np

    from vecrag.bank.sequences import make_samples
    from vecrag.bank.store import Bank
    from vecrag.decode.baselines import baseline_generators
    from vecrag.decode.calibration import calibrated_cascade, calibrated_feedback, load_calibration
    from vecrag.decode.generate import Decoder
    from vecrag.decode.predictors import parse_predictor
    from vecrag.decode.profiles import PolicySet, load_profiles
    from vecrag.eval.decode_eval import collect
    from vecrag.eval.rollout_eval import make_prompts, rollout_articles, run_generator
    from vecrag.index.load import open_index
    from vecrag.runtime import set_threads

    set_threads(None, None)
    bank = Bank.open(args.bank)
    lvm = parse_predictor(args.lvm, "lvm", bank=bank)
    tower = parse_predictor(args.retriever, "retriever", bank=bank)
    cal = load_calibration(bank, args.lvm, args.retriever, required=True, why="this benchmark needs")
    if "blend" not in cal:
        raise SystemExit(f"{cal['path']} has no BLEND fit: run `vecrag calibrate` again")
    index = open_index(bank, backend="auto", device="cpu")
    lanes = sorted({str(x) for x in bank.lanes if x})
    neutral = load_profiles().policy_set("neutral", lanes, cal)
    alone_pts = tuple(tuple(p) for p in cal["blend"]["grid"][0]["alpha_points"])  # the grid's blend_tau 0 row

    def n_star_alone(p):
        return p.replace(blend_tau=0.0, alpha_points=alone_pts)

    policies = {"neutral": neutral,
                "n* alone": PolicySet("n* alone", n_star_alone(neutral.default),
                                      {ln: n_star_alone(p) for ln, p in neutral.by_lane.items()})}
    cfg = calibrated_cascade(cal, K=neutral.default.K)
    splits = [s for s in args.splits.split(",") if s]
    print(f"bank {bank.path}: neutral blend_tau={neutral.default.blend_tau:g}; n* alone: blend_tau=0 with the "
          f"calibration's weights for it")

    print("\nteacher-forced: cos(emitted, truth) - cos(v_hat, truth), 95 % CI over steps")
    print(f"{'split':<7}{'steps':>7}{'neutral':>20}{'n* alone':>20}{'neutral - n* alone':>22}")
    for split in splits:
        samples = make_samples(bank, split, max_samples=args.max_samples or None, seed=0)
        gain = {}
        for name, pol in policies.items():
            a, _ = collect(bank, samples, lvm, tower, index, pol, cfg)
            gain[name] = np.asarray(a["cos_emit"], np.float64) - np.asarray(a["cos_vhat"], np.float64)
        cells = [f"{m:+.4f} +- {h:.4f}" for m, h in (ci(gain["neutral"]), ci(gain["n* alone"]),
                                                     ci(gain["neutral"] - gain["n* alone"]))]
        print(f"{split:<7}{len(samples):>7}{cells[0]:>20}{cells[1]:>20}{cells[2]:>22}")

    gens = {name: Decoder.for_bank(bank, index, lvm, tower, pol, cfg, feedback=calibrated_feedback(cal))
            for name, pol in policies.items()}
    base = baseline_generators(bank, index, lvm, tower)
    mine = f"greedy: {tower.name}" if f"greedy: {tower.name}" in base else "greedy: ewma query"  # the same query
    for name, g in base.items():
        if name == mine:
            gens["greedy tower"] = g  # always SNAP to the retriever's best unused chunk
        else:
            g.close()
    cov: dict[str, list[np.ndarray]] = {k: [] for k in gens}
    try:
        for split in splits:
            for P in (int(p) for p in args.prompt_chunks.split(",") if p):
                starts = rollout_articles(bank, split, P, args.S, max_articles=args.max_articles)
                prompts = make_prompts(bank, starts, P, args.S)
                for name, g in gens.items():
                    cov[name].append(run_generator(bank, g, prompts, args.S)["arrays"]["coverage"][:, 0])
    finally:
        for g in gens.values():
            g.close()
    c = {k: np.concatenate(v) if v else np.zeros(0) for k, v in cov.items()}
    print(f"\nrollouts ({args.splits}; prompts of {args.prompt_chunks} chunks; {args.S} steps): coverage of the true "
          "continuation, 95 % CI over rollouts")
    print(f"{'generator':<14}{'rollouts':>9}{'coverage %':>18}{'vs neutral, points':>22}")
    for name, arr in c.items():
        m, h = ci(arr)
        d = "" if name == "neutral" else "{:+.2f} +- {:.2f}".format(*(100 * v for v in ci(arr - c["neutral"])))
        print(f"{name:<14}{len(arr):>9}{f'{100 * m:.2f} +- {100 * h:.2f}':>18}{d:>22}".rstrip())


if __name__ == "__main__":
    main()
