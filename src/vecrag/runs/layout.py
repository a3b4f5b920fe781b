"""The run directory's layout: what a run directory holds, and the checks that need only its file names.

Layout::

    RUN/
      lock           {pid, host, boot_id, proc_start, started, command, token}: present while a trainer writes RUN
      run.json       the run's identity, written when it starts: task, the bank (resolved path, size, encoder,
                     split seed and ratios, the manifest's checksums) and the resolved config
      config.yaml    the resolved config (what --resume loads)
      bank.json      retriever runs: path, n, dim and encoder of the bank (read by `vecrag eval retriever`)
      log.jsonl      train / val / mining / event records
      checkpoints/   best.pt, last.pt, step and pre-validation checkpoints with an index.json of their sha256
                     (see vecrag.train.checkpoint)
      metrics/       the reports of `vecrag eval ...` (JSON, plus tables and plots)
      calibration.json   LVM runs: `vecrag calibrate`'s thresholds and weights for this LVM and retriever
      decode.jsonl   `vecrag generate --telemetry`: one line per decoding step (the dashboard reads it)
      tb/            TensorBoard scalars

This module imports nothing above the foundation, so every stage that writes or reads a run (the training
loop, the evaluators, the server) takes the names from here. :mod:`vecrag.runs.lock` guards the directory,
:mod:`vecrag.runs.rundir` creates and resumes it, :mod:`vecrag.runs.load` loads the trained model it holds.
"""

from __future__ import annotations

import json
from pathlib import Path

from vecrag.errors import VecragError

LOCK = "lock"
RECORD = "run.json"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
BEST = "best.pt"
LAST = "last.pt"
LOG = "log.jsonl"
TB = "tb"
METRICS = "metrics"              # RUN/metrics/: the JSON reports of `vecrag eval ...` (the dashboard lists them)
CALIBRATION = "calibration.json"  # LVM runs: what `vecrag calibrate` measured for this LVM and retriever
BANK_INFO = "bank.json"          # RUN/bank.json: path, n, dim and encoder of the training bank
RECORD_FORMAT = 1


# ---- what the directory holds -------------------------------------------------------------------------------
def checkpoint_files(run_dir: str | Path) -> list[str]:
    ck = Path(run_dir) / CHECKPOINTS
    return sorted(p.name for p in ck.glob("*.pt")) if ck.is_dir() else []


def holds_run(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a run that ``--resume`` can continue (its config or any checkpoint)."""
    return (Path(run_dir) / CONFIG).exists() or bool(checkpoint_files(run_dir))


def refuse_existing_run(run_dir: str | Path, task: str) -> None:
    """A new run (``--out``) must not write into a directory that already holds one."""
    run_dir = Path(run_dir)
    if not holds_run(run_dir):
        return
    ckpts = checkpoint_files(run_dir)
    what = ", ".join(([CONFIG] if (run_dir / CONFIG).exists() else []) + ([f"{len(ckpts)} checkpoint(s)"]
                                                                         if ckpts else []))
    raise VecragError(f"run directory already holds a run ({what}); a new run would overwrite it", path=run_dir,
                      hint=f"continue it with `vecrag train {task} --resume {run_dir}`, or choose another --out "
                           "(to start over, delete the directory first)")


def check_task(run_dir: str | Path, task: str) -> None:
    """Refuse to resume another task's run (cheap: before its config is parsed as this task's)."""
    p = Path(run_dir) / RECORD
    try:
        recorded = json.loads(p.read_text(encoding="utf-8")).get("task")
    except (OSError, ValueError, AttributeError):
        return  # no or unreadable run.json: RunDir.claim says what is wrong
    if recorded and recorded != task:
        raise VecragError(f"this run was started by `vecrag train {recorded}`, not `vecrag train {task}`",
                          path=run_dir,
                          hint=f"continue it with `vecrag train {recorded} --resume {run_dir}`")
