"""`vecrag train lvm BANK --config CFG.yaml [key=value ...] --out RUN` and `vecrag train lvm --resume RUN`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

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

A run directory belongs to one run: RUN/lock refuses a second trainer while one writes RUN (a lock left by a
trainer that died is taken over, with a warning); --out refuses a directory that already holds a run; and
--resume refuses a bank that changed since the run started (path, size, split, checksums: RUN/run.json) and
a changed config (an edited config.yaml, KEY=VALUE overrides) unless --allow-config-change is given.

Examples:
  vecrag train lvm banks/wiki-3k --config lvm-default --out runs/lvm-gru
  vecrag train lvm banks/wiki-3k --config lvm-default model.kind=transformer loss.w_nce=0.1 --out runs/lvm-tf
  vecrag train lvm --resume runs/lvm-gru
  torchrun --nproc_per_node 4 -m vecrag.cli train lvm banks/wiki-3k --config lvm-gpu --out runs/lvm-ddp
    (DDP, docs/distributed.md: train.batch_size is the batch of EACH process; rank 0 writes the run)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from vecrag.config import FlagWithOverrides, OptionWithOverrides

    p.epilog = ("Every config key with its value, type, default and help: `vecrag config show lvm-default "
                "[KEY=VALUE ...]` (any preset, YAML file or run directory); `vecrag config list` names the "
                "presets.")
    p.add_argument("bank", metavar="BANK", nargs="?", help="bank directory (not needed with --resume)")
    p.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="config overrides, e.g. train.lr=1e-3")
    p.add_argument("--config", default="lvm-default", action=OptionWithOverrides, metavar="CONFIG [KEY=VALUE ...]",
                   help="YAML config or shipped preset name (overrides may follow)")
    p.add_argument("--out", default=None, action=OptionWithOverrides, metavar="RUN [KEY=VALUE ...]",
                   help="run directory (required unless --resume)")
    p.add_argument("--resume", metavar="RUN", default=None, action=OptionWithOverrides,
                   help="continue a run from its newest good checkpoint")
    p.add_argument("--allow-config-change", action=FlagWithOverrides, metavar="KEY=VALUE",
                   help="with --resume: accept KEY=VALUE overrides or an edited config.yaml (e.g. more epochs of an "
                        "unfinished run, which then differs from an uninterrupted one). A changed bank is never "
                        "accepted")
    p.add_argument("--quiet", action=FlagWithOverrides, metavar="KEY=VALUE", help="no progress bars")
    p.set_defaults(extra_overrides=[], extra_positionals=[])


def run(args: argparse.Namespace) -> int:

    summary = train(args)
    if summary is not None:  # rank 0 (or a plain run) reports
        print(json.dumps(summary, indent=2))
    return 0


def train(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train (or resume) as the command line says; the run's summary, or None on a non-main torchrun rank.
    ``vecrag.train_lvm`` calls this with a parsed command line."""
    from vecrag.config import command_overrides, load_config
    from vecrag.runs import rundir
    from vecrag.runs.layout import CONFIG
    from vecrag.runtime import set_threads

    bank_arg, overrides = command_overrides(args)

    if args.resume:  # user errors first, before torch loads
        run_dir = Path(args.resume)
        if bank_arg or (overrides and not args.allow_config_change):
            raise VecragError("--resume continues a run exactly as configured; it takes no BANK or overrides",
                              hint="start a new run with --out to change the config, or accept a changed config "
                                   "(e.g. more epochs) with --allow-config-change")
        if not (run_dir / CONFIG).exists():
            raise VecragError("not a run directory (no config.yaml)", path=run_dir,
                              hint="give the --out directory of an earlier `vecrag train lvm`")
        rundir.precheck(run_dir, "lvm", resume=True)
    elif args.allow_config_change:
        raise VecragError("--allow-config-change goes with --resume RUN", hint="a new run (--out) takes any config")
    elif not bank_arg or not args.out:
        raise VecragError("give a BANK and --out RUN (or --resume RUN)",
                          hint="vecrag train lvm BANK --config lvm-default --out runs/lvm")

    from vecrag.train.lvm_task import LVMConfig

    if args.resume:
        cfg = load_config(LVMConfig, run_dir / CONFIG, overrides)
    else:
        run_dir = Path(args.out)
        rundir.precheck(run_dir, "lvm", resume=False)  # checked again under the lock
        cfg = load_config(LVMConfig, args.config, overrides)
        cfg.bank = str(Path(bank_arg).resolve())

    import torch

    import vecrag.bank.store
    from vecrag.runtime import pick_device
    from vecrag.train import distributed as dd

    dd.init_from_env(torch.device(pick_device(cfg.train.device)).type)  # torchrun; a no-op for plain runs
    dd.barrier()  # every rank has checked the run directory before rank 0 writes into it
    set_threads(cfg.train.torch_threads or dd.default_threads())
    bank = vecrag.bank.store.Bank.open(cfg.bank)
    run = rundir.RunDir(run_dir, "lvm")
    try:
        with run.claim(resume=bool(args.resume), bank=bank, config=cfg, allow_config_change=args.allow_config_change):
            result = _fit(args, run, bank, cfg)
    finally:
        dd.cleanup()
    if not dd.is_main():
        return None
    hist = result["history"]
    first = hist[0] if hist else {}
    best = next((h for h in hist if h["epoch"] == result["best_epoch"]), first)
    summary = {"run": str(run_dir), "steps": result["step"], "best_epoch": result["best_epoch"],
               "metric": cfg.train.early_stop_metric, "best": result["best"],
               "val_at_start": {k: first.get(k) for k in ("cos", "R@10")},
               "val_best": {k: best.get(k) for k in ("cos", "R@10")}}
    return summary


def _fit(args: argparse.Namespace, run: Any, bank: Any, cfg: Any) -> dict[str, Any]:
    """Build the task and the trainer (fresh or resumed) in the claimed run directory and train."""
    from vecrag.train.loop import seed_everything
    from vecrag.train.lvm_task import LVMTask

    seed_everything(cfg.train.seed)  # model initialisation is a function of the seed
    task = LVMTask(bank, cfg)
    try:
        return run.trainer(task, cfg, resume=bool(args.resume), quiet=args.quiet).fit()
    finally:
        task.close()
