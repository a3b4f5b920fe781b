"""`vecrag train lvm BANK --config CFG.yaml [key=value ...] --out RUN` and `vecrag train lvm --resume RUN`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vecrag.errors import VecragError

COMMAND = ("train", "lvm")
HELP = "train a latent vector model (next chunk vector from the previous ones); resumable"
DESCRIPTION = """\
Train an LVM on every position of every TRAIN article of BANK with the shared training loop. The config is
a YAML file or a shipped preset (lvm-tiny, lvm-default, lvm-gpu), then key=value overrides with dotted keys
(train.lr=1e-3 model.kind=lstm loss.w_nce=0.1). The run directory gets config.yaml (resolved), log.jsonl,
checkpoints/ (step-N, epoch-E-preval, last, best, index.json with sha256) and TensorBoard scalars under tb/.

Validation runs before training (the anchor heuristic's score is the first "best") and after every epoch;
best.pt is the best validated state, so a trained model never ends below its anchor on the val split.

A killed run continues with `vecrag train lvm --resume RUN` from its newest good checkpoint and reaches
the same weights as an uninterrupted run (CPU).

Examples:
  vecrag train lvm banks/wiki-3k --config lvm-default --out runs/lvm-gru
  vecrag train lvm banks/wiki-3k --config lvm-default model.kind=transformer loss.w_nce=0.1 --out runs/lvm-tf
  vecrag train lvm --resume runs/lvm-gru
  torchrun --nproc_per_node 4 -m vecrag.cli train lvm banks/wiki-3k --config lvm-gpu --out runs/lvm-ddp
    (DDP, docs/distributed.md: train.batch_size is the batch of EACH process; rank 0 writes the run)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from vecrag.config import FlagWithOverrides, OptionWithOverrides

    p.add_argument("bank", metavar="BANK", nargs="?", help="bank directory (not needed with --resume)")
    p.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="config overrides, e.g. train.lr=1e-3")
    p.add_argument("--config", default="lvm-default", action=OptionWithOverrides, metavar="CONFIG [KEY=VALUE ...]",
                   help="YAML config or shipped preset name (overrides may follow)")
    p.add_argument("--out", default=None, action=OptionWithOverrides, metavar="RUN [KEY=VALUE ...]",
                   help="run directory (required unless --resume)")
    p.add_argument("--resume", metavar="RUN", default=None, action=OptionWithOverrides,
                   help="continue a run from its newest good checkpoint")
    p.add_argument("--quiet", action=FlagWithOverrides, metavar="KEY=VALUE", help="no progress bars")
    p.set_defaults(extra_overrides=[], extra_positionals=[])


def run(args: argparse.Namespace) -> int:
    from vecrag.config import command_overrides, load_config
    from vecrag.runtime import set_threads

    bank_arg, overrides = command_overrides(args)

    if args.resume:  # user errors first, before torch loads
        run_dir = Path(args.resume)
        if overrides or bank_arg:
            raise VecragError("--resume continues a run exactly as configured; it takes no BANK or overrides",
                              hint="start a new run with --out to change the config")
        if not (run_dir / "config.yaml").exists():
            raise VecragError("not a run directory (no config.yaml)", path=run_dir,
                              hint="give the --out directory of an earlier `vecrag train lvm`")
    elif not bank_arg or not args.out:
        raise VecragError("give a BANK and --out RUN (or --resume RUN)",
                          hint="vecrag train lvm BANK --config lvm-default --out runs/lvm")

    from vecrag.train.lvm_task import LVMConfig

    if args.resume:
        cfg = load_config(LVMConfig, run_dir / "config.yaml")
    else:
        run_dir = Path(args.out)
        if (run_dir / "checkpoints" / "index.json").exists():
            raise VecragError("run directory already holds a run", path=run_dir,
                              hint=f"continue it with --resume {run_dir}, or choose another --out")
        cfg = load_config(LVMConfig, args.config, overrides)
        cfg.bank = str(Path(bank_arg).resolve())

    import torch

    import vecrag.bank
    from vecrag.runtime import pick_device
    from vecrag.train import distributed as dd
    from vecrag.train.loop import Trainer, seed_everything
    from vecrag.train.lvm_task import LVMTask

    dd.init_from_env(torch.device(pick_device(cfg.train.device)).type)  # torchrun; a no-op for plain runs
    dd.barrier()  # every rank has checked the run directory before rank 0 writes into it
    set_threads(cfg.train.torch_threads or dd.default_threads())
    bank = vecrag.bank.Bank.open(cfg.bank)
    seed_everything(cfg.train.seed)  # model initialisation is a function of the seed
    task = LVMTask(bank, cfg)
    try:
        if args.resume:
            trainer = Trainer.resume(run_dir, task, cfg.train, run_config=cfg, quiet=args.quiet)
        else:
            trainer = Trainer(task, cfg.train, run_dir, run_config=cfg, quiet=args.quiet)
        result = trainer.fit()
    finally:
        task.close()
        dd.cleanup()
    if not dd.is_main():
        return 0
    hist = result["history"]
    first = hist[0] if hist else {}
    best = next((h for h in hist if h["epoch"] == result["best_epoch"]), first)
    summary = {"run": str(run_dir), "steps": result["step"], "best_epoch": result["best_epoch"],
               "metric": cfg.train.early_stop_metric, "best": result["best"],
               "val_at_start": {k: first.get(k) for k in ("cos", "R@10")},
               "val_best": {k: best.get(k) for k in ("cos", "R@10")}}
    print(json.dumps(summary, indent=2))
    return 0
