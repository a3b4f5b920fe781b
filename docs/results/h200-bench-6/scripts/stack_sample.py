"""Where the trainer thread spends its wall time, by mode: a sampler thread reads the trainer's Python stack
every 2 ms (sys._current_frames) during Trainer.fit and counts the innermost frame and the innermost vecrag
frame. Usage (repository root, CUDA machine): python docs/results/h200-bench-6/scripts/stack_sample.py none,async"""
import collections, sys, threading, time
from pathlib import Path

sys.path.insert(0, "benchmarks")
import numpy as np  # noqa
import vecrag  # noqa
from train_retriever import measure, random_bank
from vecrag.train import loop

modes = sys.argv[1].split(",")
args = type("A", (), {})()
args.batch, args.accum, args.steps, args.log_every, args.device, args.context = 256, 1, 400, 20, "cuda", 10
args.k, args.neg, args.backend, args.timeout, args.hidden, args.profile_out = 64, 8, "torch", 0.05, 256, None
bank = random_bank(Path(".gpu/nc/bank-1000000"), 1_000_000, 384)
orig_fit = loop.Trainer.fit
counts: dict = {}


def fit(self):
    tid = threading.get_ident()
    stop = threading.Event()
    inner, ours = collections.Counter(), collections.Counter()

    def sample():
        while not stop.is_set():
            f = sys._current_frames().get(tid)
            if f is not None:
                inner[f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}"] += 1
                g = f
                while g is not None and "vecrag" not in g.f_code.co_filename:
                    g = g.f_back
                if g is not None:
                    ours[f"{Path(g.f_code.co_filename).name}:{g.f_lineno} {g.f_code.co_name}"] += 1
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        return orig_fit(self)
    finally:
        stop.set()
        th.join()
        counts[self.task.cfg.mining.mode] = (inner, ours)


loop.Trainer.fit = fit
for rep in range(2):
    for mode in modes:
        r = measure(bank, Path(f".gpu/nc/ss-{mode}-{rep}-{time.time_ns()}"), mode, args)
        print(f"round {rep} {mode}: {r['samples_per_s']:.0f} samples/s, wait ms/step {r['wait_ms'] / args.steps:.2f}")
        inner, ours = counts[mode.split('-')[0]]
        tot = sum(inner.values())
        print(f"  {tot} samples; innermost frames:")
        for k, v in inner.most_common(14):
            print(f"    {100 * v / tot:5.1f}%  {k}")
        print("  innermost vecrag frames:")
        for k, v in ours.most_common(14):
            print(f"    {100 * v / tot:5.1f}%  {k}")
        sys.stdout.flush()
