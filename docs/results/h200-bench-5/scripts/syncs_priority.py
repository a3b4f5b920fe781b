"""GPU diagnostics for the async gap: (1) host syncs in a training step (torch sync debug mode), (2) a
high-priority CUDA stream for the trainer vs the miner's default-priority stream."""
import argparse, collections, sys, traceback, warnings
from pathlib import Path
sys.path.insert(0, "benchmarks")
import vecrag  # noqa
import numpy as np, torch
from train_retriever import measure, random_bank
from vecrag.train.loop import Trainer
from vecrag.train.retriever_task import RetrieverTask

bank = random_bank(Path(".gpu/nc/bank-1000000"), 1000000, 384)
args = argparse.Namespace(batch=256, accum=1, steps=400, log_every=20, device="cuda", context=10, neg=8, k=64,
                          backend="torch", timeout=0.05, hidden=256, profile_out=None)
table = np.random.default_rng(0).integers(0, bank.n, (bank.n, 8))
orig_mined, orig_fit = RetrieverTask._mined, Trainer.fit

# 1. syncs
sites = collections.Counter()
def show(msg, cat, fn, ln, file=None, line=None):
    st = [f for f in traceback.extract_stack()[:-1] if "vecrag" in f.filename or "benchmarks" in f.filename]
    sites[(str(msg)[:80], " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in st[-4:]))] += 1
def fit_dbg(self):
    torch.cuda.set_sync_debug_mode(1)
    try:
        return orig_fit(self)
    finally:
        torch.cuda.set_sync_debug_mode(0)
warnings.showwarning = show
warnings.simplefilter("always")
Trainer.fit = fit_dbg
for mode in ("static", "async"):
    sites.clear()
    a = argparse.Namespace(**{**vars(args), "steps": 60})
    if mode == "static":
        RetrieverTask._mined = lambda self, idx, step: table[np.asarray(idx)]
    measure(bank, Path(f".gpu/nc/dbg-{mode}-{np.random.randint(1<<30)}"), "sync" if mode == "static" else mode, a)
    RetrieverTask._mined = orig_mined
    print(f"== syncs, {mode}, 60 steps (+ 2 validations)")
    for (m, where), c in sites.most_common(12):
        print(f"{c:5d}  {m}  @ {where}")
Trainer.fit = orig_fit
warnings.simplefilter("default")

# 2. trainer on a high-priority stream
lo, hi = torch.cuda.Stream.priority_range()
print("priority range", lo, hi)
def fit_prio(self):
    torch.cuda.synchronize()
    s = torch.cuda.Stream(priority=hi)
    with torch.cuda.stream(s):
        out = orig_fit(self)
    torch.cuda.synchronize()
    return out
res = collections.defaultdict(list)
for rep in range(2):
    for mode in ("none", "static", "async", "none+prio", "static+prio", "async+prio"):
        base = mode.split("+")[0]
        Trainer.fit = fit_prio if mode.endswith("prio") else orig_fit
        if base == "static":
            RetrieverTask._mined = lambda self, idx, step: table[np.asarray(idx)]
        r = measure(bank, Path(f".gpu/nc/p-{mode}-{np.random.randint(1<<30)}"), "sync" if base == "static" else base, args)
        RetrieverTask._mined = orig_mined
        res[mode].append(r["samples_per_s"])
        print(f"  {rep} {mode}: {r['samples_per_s']:.0f} hits {r['hits']:.0f} job {r['job_ms']:.1f}", flush=True)
Trainer.fit = orig_fit
print("\nmode            median   runs")
for m, v in res.items():
    print(f"{m:14s} {np.median(v):8.0f}   {[round(x) for x in v]}")
