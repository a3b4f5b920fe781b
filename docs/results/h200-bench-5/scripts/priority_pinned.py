"""Current tree, H200 1M: {priority stream on/off} x {pinned/plain copies} x {none, async}, 3 interleaved rounds."""
import argparse, collections, contextlib, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
import vecrag  # noqa
import numpy as np, torch
from train_retriever import measure, random_bank
import vecrag.train.retriever_task as rt, vecrag.train.losses as lo, vecrag.train.miners as mi, vecrag.train.loop as lp
from vecrag.runtime import to_device, priority_stream

def plain(a, device):
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    return t.to(device)

bank = random_bank(Path(".gpu/nc/bank-1000000"), 1000000, 384)
args = argparse.Namespace(batch=256, accum=1, steps=400, log_every=20, device="cuda", context=10, neg=8, k=64,
                          backend="torch", timeout=0.05, hidden=256, profile_out=None)
res = collections.defaultdict(list)
for rep in range(3):
    for prio in ("prio", "noprio"):
        lp.priority_stream = priority_stream if prio == "prio" else (lambda d: contextlib.nullcontext())
        for var in ("pinned", "plain"):
            for m in (rt, lo, mi):
                m.to_device = to_device if var == "pinned" else plain
            for mode in ("none", "async"):
                r = measure(bank, Path(f".gpu/nc/d3-{np.random.randint(1<<30)}"), mode, args)
                res[f"{mode}-{prio}-{var}"].append(r["samples_per_s"])
                print(f"  {rep} {mode}-{prio}-{var}: {r['samples_per_s']:.0f}", flush=True)
print("\nvariant                 median   runs")
for k, v in sorted(res.items()):
    print(f"{k:22s} {np.median(v):8.0f}   {[round(x) for x in v]}")
