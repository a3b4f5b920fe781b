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
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bank", metavar="BANK", nargs="?", help="bank directory (not needed with --resume)")
    p.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="config overrides, e.g. train.lr=1e-3")
    p.add_argument("--config", default="lvm-default", help="YAML config or shipped preset name")
    p.add_argument("--out", default=None, help="run directory (required unless --resume)")
    p.add_argument("--resume", metavar="RUN", default=None, help="continue a run from its newest good checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    collect_overrides(p)


def collect_overrides(p: argparse.ArgumentParser) -> None:
    """Let KEY=VALUE overrides appear anywhere (argparse takes positionals only in their first run: with
    `BANK --config X k=v --out RUN`, `k=v` would be rejected as unrecognized)."""
    inner = p.parse_known_args

    def parse_known_args(args=None, namespace=None):  # type: ignore[no-untyped-def]
        ns, extras = inner(args, namespace)
        keep = [a for a in extras if "=" in a and not a.startswith("-")]
        ns.overrides = list(getattr(ns, "overrides", None) or []) + keep
        return ns, [a for a in extras if a not in keep]

    p.parse_known_args = parse_known_args  # type: ignore[method-assign]


def run(args: argparse.Namespace) -> int:
    from vecrag.config import load_config
    from vecrag.runtime import set_threads

    overrides = list(args.overrides)
    bank_arg = args.bank
    if bank_arg is not None and "=" in bank_arg and not Path(bank_arg).exists():
        overrides.insert(0, bank_arg)
        bank_arg = None

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

    set_threads(cfg.train.torch_threads or None)
    import vecrag.bank
    from vecrag.train.loop import Trainer, seed_everything
    from vecrag.train.lvm_task import LVMTask

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
    hist = result["history"]
    first = hist[0] if hist else {}
    best = next((h for h in hist if h["epoch"] == result["best_epoch"]), first)
    summary = {"run": str(run_dir), "steps": result["step"], "best_epoch": result["best_epoch"],
               "metric": cfg.train.early_stop_metric, "best": result["best"],
               "val_at_start": {k: first.get(k) for k in ("cos", "R@10")},
               "val_best": {k: best.get(k) for k in ("cos", "R@10")}}
    print(json.dumps(summary, indent=2))
    return 0
