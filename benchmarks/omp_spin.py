"""CPU training speed under OpenMP wait policies (not a test; prints a table).

libgomp reads its wait policy once, when it loads, so each policy runs in its own child process; rounds
alternate the policies so that a drift of the machine hits all of them alike. The child trains the retriever
on a random bank (``benchmarks/train_retriever.py``'s ``measure``) with no mining, and with a faiss miner
(sync, then an async thread): the case where two OpenMP runtimes (torch's and faiss's) share the cores and
spinning workers once made training 25x slower (docs/bugs-and-fixes.md)::

    python benchmarks/omp_spin.py --rounds 3

Policies: ``passive`` (OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=0: a worker sleeps at once), ``spin10k``
(PASSIVE with GOMP_SPINCOUNT=10000, vecrag's default) and ``default`` (libgomp's own: ~300,000 spins).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

POLICIES = {"passive": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0"},
            "spin10k": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"},
            "spin50k": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "50000"},
            "default": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": None}}  # "": set, so vecrag adds nothing


def child(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_retriever import measure, random_bank

    from vecrag.runtime import set_threads

    set_threads()
    work = Path(args.workdir)
    bank = random_bank(work / "bank", args.size, 384)  # reused across children (written once)
    ns = argparse.Namespace(batch=args.batch, accum=1, steps=args.steps, log_every=5, device="cpu", context=10,
                            neg=8, k=64, backend="faiss", timeout=0.5, hidden=256, profile_out=None)
    out = {}
    for mode in args.modes.split(","):
        out[mode] = measure(bank, Path(tempfile.mkdtemp(dir=work)), mode, ns)["samples_per_s"]
    print(json.dumps(out))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=20_000)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--modes", default="none,sync,async")
    p.add_argument("--policies", default="passive,spin10k,default")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    import numpy as np

    work = args.workdir or tempfile.mkdtemp(prefix="vecrag-omp-")
    names = args.policies.split(",")
    got: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            env = {k: v for k, v in {**os.environ, **POLICIES[name]}.items() if v is not None}
            cmd = [sys.executable, __file__, "--child", "--workdir", work, "--size", str(args.size),
                   "--steps", str(args.steps), "--batch", str(args.batch), "--modes", args.modes]
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
            if res.returncode != 0:
                print(res.stderr[-3000:], file=sys.stderr)
                return 1
            got[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(f"  round {r + 1}/{args.rounds} {name}: {got[name][-1]}", file=sys.stderr)
    modes = args.modes.split(",")
    med = {n: {m: float(np.median([g[m] for g in got[n]])) for m in modes} for n in names}
    print(f"\nretriever training samples/s on the CPU ({os.cpu_count()} cores), bank {args.size}, batch "
          f"{args.batch}, GRU 256, faiss miner; median of {args.rounds} alternating rounds (x: vs {names[0]})")
    print(f"{'policy':>10} " + " ".join(f"{m:>16}" for m in modes))
    for n in names:
        cells = [f"{med[n][m]:>8.0f} ({med[n][m] / med[names[0]][m]:>4.2f}x)" for m in modes]
        print(f"{n:>10} " + " ".join(f"{c:>16}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
