"""Torch ops one retriever training step dispatches, per mining mode (not a test; prints a table).

On a GPU the retriever's step is launch-bound: the H200 profile showed 1.3 ms of GPU work in a ~17 ms step and
~240 kernel launches a step (docs/benchmarks.md, runs 3-4), so the number of ops that launch a kernel is what
the step costs there. This counts them on the CPU (the same Python, the same dispatch): leaf ``aten::`` ops,
without the ones that only make views or allocate. Validation and start-up are removed by difference: a run of
``--steps`` optimizer steps minus a run of ``--steps // 2``. ``static`` feeds precomputed negatives in the
form the miners hand over (as ``benchmarks/negatives_cost.py``)::

    python benchmarks/step_ops.py --steps 40
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_retriever import random_bank  # noqa: E402

NO_KERNEL = {"aten::view", "aten::as_strided", "aten::empty", "aten::empty_strided", "aten::reshape",
             "aten::_reshape_alias", "aten::unsqueeze", "aten::squeeze", "aten::t", "aten::transpose",
             "aten::expand", "aten::permute", "aten::select", "aten::slice", "aten::detach", "aten::alias",
             "aten::lift_fresh", "aten::resolve_conj", "aten::resolve_neg", "aten::_unsafe_view", "aten::split",
             "aten::narrow", "aten::contiguous", "aten::result_type", "aten::empty_like", "aten::set_",
             "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense", "aten::unbind", "aten::chunk",
             "aten::split_with_sizes", "aten::numpy_T", "aten::dim", "aten::size", "aten::stride"}


def count_ops(bank, mode: str, steps: int) -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from vecrag.config import load_config
    from vecrag.train.loop import Trainer
    from vecrag.train.mining import miners
    from vecrag.train.retriever_task import RetrieverConfig, RetrieverTask, resolve_config

    over = ["train.batch_size=64", f"train.max_steps={steps}", "train.log_every=10", "train.device=cpu",
            "train.val_max_queries=20", "train.epochs=1", "train.tensorboard=false", "train.patience=0",
            f"mining.mode={'sync' if mode == 'static' else mode}", "mining.schedule=0:8@-1.0-1.0",
            "mining.k=64", "mining.backend=torch", "model.hidden=256", "val_backend=torch"]
    cfg = load_config(RetrieverConfig, "retriever-default", over)
    resolve_config(cfg, bank)
    task = RetrieverTask(bank, cfg)
    if mode == "static":
        table = np.random.default_rng(0).integers(0, bank.n, (bank.n, 8))
        aligned = "neg" in miners.MineResult.__dataclass_fields__  # [B, n_neg] here; older trees: a dict
        # ``queries``: CPU sync mining hands the step's own queries over (RetrieverTask._reuse_query)
        task._mined = ((lambda idx, step, queries=None: table[np.asarray(idx)]) if aligned else
                       (lambda idx, step, queries=None: {int(i): table[int(i)] for i in idx}))
    with tempfile.TemporaryDirectory() as d, profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.manual_seed(0)
        Trainer(task, cfg.train, Path(d) / "run", run_config=cfg, quiet=True).fit()
    task.close()
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and not e.cpu_children
               and e.name not in NO_KERNEL)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=20_000)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--modes", default="none,static,sync")
    args = p.parse_args()
    from vecrag.runtime import set_threads

    set_threads()
    with tempfile.TemporaryDirectory() as d:
        bank = random_bank(Path(d) / "bank", args.size, 384)
        half = args.steps // 2
        print(f"leaf ops that launch a kernel, per optimizer step (batch 64, GRU 256, 8 negatives, bank {bank.n})")
        print(f"{'mode':>8} {'ops/step':>9}")
        for mode in args.modes.split(","):
            per = (count_ops(bank, mode, args.steps) - count_ops(bank, mode, half)) / (args.steps - half)
            print(f"{mode:>8} {per:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
