"""`vecrag train retriever BANK --config CONFIG.yaml [key=value ...] --out RUN` (and `--resume RUN`)."""

from __future__ import annotations

import argparse
from typing import Any

COMMAND = ("train", "retriever")
HELP = "train a two-tower retriever (query tower + doc tower) with curriculum hard negatives; resumable"
DESCRIPTION = """\
Train a query tower that turns a context of chunk vectors into a query for the FULL bank, with InfoNCE over
in-batch positives, an optional memory-bank queue and mined hard negatives (curriculum schedule, sync or
async miner). The tower starts exactly at its anchor heuristic (last vector or ewma) and the best
checkpoint by the validation metric (R@10 under 100k vectors, R@500 above) is kept, so it never ends below
the anchor on the val split.

The resolved config is saved as RUN/config.yaml; RUN/log.jsonl holds train / val / mining / event records;
checkpoints are in RUN/checkpoints/. A killed run continues with `vecrag train retriever --resume RUN`.

A run directory belongs to one run: RUN/lock refuses a second trainer while one writes RUN (a lock left by a
trainer that died is taken over, with a warning); --out refuses a directory that already holds a run; and
--resume refuses a bank that changed since the run started (path, size, split, checksums: RUN/run.json) and
a changed config (overrides, an edited config.yaml) unless --allow-config-change is given.

Presets: retriever-tiny (tests), retriever-cpu-test (batch 8, the small CPU shape), retriever-default (CPU),
retriever-gpu (a 2-layer transformer tower, batch 256, async mining in a process).
Example: vecrag train retriever banks/wiki-500 --config retriever-default train.epochs=5 --out runs/r1

Several processes (DDP, docs/distributed.md): torchrun --nproc_per_node N -m vecrag.cli train retriever ...
(train.batch_size is then the batch of EACH process; rank 0 writes the run directory).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from vecrag.config import FlagWithOverrides, OptionWithOverrides

    p.epilog = ("Every config key with its value, type, default and help: `vecrag config show retriever-default "
                "[KEY=VALUE ...]` (any preset, YAML file or run directory); `vecrag config list` names the "
                "presets.")
    p.add_argument("bank", metavar="BANK", nargs="?", help="bank directory (optional with --resume)")
    p.add_argument("overrides", metavar="KEY=VALUE", nargs="*", help="config overrides, e.g. train.lr=1e-4")
    p.add_argument("--config", default="retriever-default", action=OptionWithOverrides,
                   metavar="CONFIG [KEY=VALUE ...]", help="YAML config file or shipped preset name (overrides may "
                   "follow)")
    p.add_argument("--out", metavar="RUN [KEY=VALUE ...]", action=OptionWithOverrides, help="run directory (new)")
    p.add_argument("--resume", metavar="RUN [KEY=VALUE ...]", action=OptionWithOverrides,
                   help="continue the run in RUN from its newest good checkpoint")
    p.add_argument("--allow-config-change", action=FlagWithOverrides, metavar="KEY=VALUE",
                   help="with --resume: accept KEY=VALUE overrides or an edited config.yaml (e.g. more epochs of an "
                        "unfinished run, which then differs from an uninterrupted one). A changed bank is never "
                        "accepted")
    p.set_defaults(extra_overrides=[], extra_positionals=[])
    p.add_argument("--quiet", action=FlagWithOverrides, metavar="KEY=VALUE", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import json

    summary = train(args)
    if summary is not None:  # rank 0 (or a plain run) reports
        print(json.dumps(summary, default=float))
    return 0


def train(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train (or resume) as the command line says; the run's summary, or None on a non-main torchrun rank.
    ``vecrag.train_retriever`` calls this with a parsed command line."""
    from pathlib import Path

    from vecrag.bank.store import Bank
    from vecrag.config import command_overrides, load_config
    from vecrag.errors import VecragError
    from vecrag.runs import rundir
    from vecrag.runs.layout import CONFIG
    from vecrag.runtime import pick_device
    from vecrag.train import distributed as dd
    from vecrag.train.retriever_task import RetrieverConfig, resolve_config

    args.bank, overrides = command_overrides(args)
    if bool(args.out) == bool(args.resume):
        raise VecragError("give exactly one of --out RUN (a new run) or --resume RUN",
                          hint="vecrag train retriever BANK --out runs/r1   or   --resume runs/r1")
    if args.allow_config_change and not args.resume:
        raise VecragError("--allow-config-change goes with --resume RUN", hint="a new run (--out) takes any config")
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / CONFIG).exists():
            raise VecragError("no config.yaml: not a run directory", path=run_dir,
                              hint="start the run with --out first")
        rundir.precheck(run_dir, "retriever", resume=True)
        if overrides and not args.allow_config_change:
            raise VecragError(f"--resume continues a run as it was configured; overrides {' '.join(overrides)} "
                              "would change it", path=run_dir,
                              hint="add --allow-config-change to accept the change (the run will then differ "
                                   "from an uninterrupted one), or start a new run with --out")
        cfg = load_config(RetrieverConfig, run_dir / CONFIG, overrides)
        if args.bank and Path(args.bank).resolve() != Path(cfg.bank).resolve():
            raise VecragError(f"the run was trained on {cfg.bank}, not {args.bank}", path=run_dir / CONFIG)
    else:
        if not args.bank:
            raise VecragError("missing BANK", hint="vecrag train retriever BANK --out RUN")
        run_dir = Path(args.out)
        rundir.precheck(run_dir, "retriever", resume=False)  # checked again under the lock
        cfg = load_config(RetrieverConfig, args.config, overrides)
        cfg.bank = str(Path(args.bank).resolve())
    import torch

    dd.init_from_env(torch.device(pick_device(cfg.train.device)).type)  # torchrun; a no-op for plain runs
    dd.barrier()  # every rank has checked the run directory before rank 0 writes into it
    bank = Bank.open(cfg.bank)
    resolve_config(cfg, bank)
    run = rundir.RunDir(run_dir, "retriever")
    try:
        with run.claim(resume=bool(args.resume), bank=bank, config=cfg, allow_config_change=args.allow_config_change):
            result, stats = _fit(args, run, bank, cfg)
    finally:
        dd.cleanup()
    if not dd.is_main():
        return None
    key = cfg.train.early_stop_metric
    first = result["history"][0] if result["history"] else {}
    return {"run": str(run_dir), "steps": result["step"], "metric": key, "best": result["best"],
            "best_epoch": result["best_epoch"], "anchor": first.get(f"baseline_{key}"), "stats": stats}


def _fit(args: argparse.Namespace, run: Any, bank: Any, cfg: Any) -> tuple[dict[str, Any], dict[str, float]]:
    """Build the task and the trainer (fresh or resumed) in the claimed run directory and train; (the loop's
    result, the task's counters)."""
    from vecrag.fsutil import atomic_write_json
    from vecrag.runs.load import BANK_INFO
    from vecrag.train import distributed as dd
    from vecrag.train.retriever_task import RetrieverTask

    task = RetrieverTask(bank, cfg)
    try:
        if not args.resume and dd.is_main():
            atomic_write_json(run.path / BANK_INFO, {"path": cfg.bank, "n": bank.n, "dim": bank.dim,
                                                     "encoder": bank.encoder})
        result = run.trainer(task, cfg, resume=bool(args.resume), quiet=args.quiet).fit()
    finally:
        task.close()
    return result, task.stats()  # after close: a miner's last counters are in
