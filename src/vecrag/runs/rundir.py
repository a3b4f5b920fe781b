"""A run directory from start to resume: what the run was started with, and the whole claim protocol.

A run directory (layout: :mod:`vecrag.runs.layout`) belongs to one run. :meth:`RunDir.claim` takes the lock
(:mod:`vecrag.runs.lock`; rank 0 under torchrun) for the whole training: a second trainer on the same
directory is refused while the first runs; a lock left behind by a trainer that died is reported and taken
over. Under the lock a new run (``--out``) is refused in a directory that already holds one, and ``--resume``
is refused when the bank (path, size, split, checksums) differs from the one recorded in run.json, or the
config does without ``--allow-config-change`` (a changed bank is never accepted).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from vecrag.errors import VecragError
from vecrag.fsutil import atomic_write_json
from vecrag.runs.layout import CONFIG, RECORD, RECORD_FORMAT, check_task, refuse_existing_run
from vecrag.runs.lock import RunLock

log = logging.getLogger(__name__)
T = TypeVar("T")


def precheck(run_dir: str | Path, task: str, *, resume: bool) -> None:
    """The cheap refusals, before torch loads (:meth:`RunDir.claim` checks again under the lock): another
    task's run, a directory that a live trainer writes, a new run into a directory that holds one."""
    if resume:
        check_task(run_dir, task)
    RunLock(run_dir, task).refuse_if_held()
    if not resume:
        refuse_existing_run(run_dir, task)


# ---- what the run was started with -----------------------------------------------------------------------------
def bank_identity(bank: Any) -> dict[str, Any]:
    """What must not change under a run: the bank's resolved path, size, encoder, split and checksums."""
    m = bank.manifest
    return {"path": str(Path(bank.path).resolve()), "n_chunks": int(bank.n), "dim": int(bank.dim),
            "encoder": m.get("encoder"), "split": m.get("split"), "checksums": dict(m.get("checksums") or {})}


def plain(obj: Any) -> Any:
    """``obj`` as JSON would give it back (tuples become lists), for comparisons with run.json."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs."""
    a, b = flatten(plain(before)), flatten(plain(after))
    return [f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in sorted(set(a) | set(b))
            if a.get(k, "(unset)") != b.get(k, "(unset)")]


def _split_text(split: Any) -> str:
    if not isinstance(split, dict):
        return "unknown"
    return f"seed {split.get('seed')}, ratios {','.join(str(r) for r in split.get('ratios') or [])}"


def bank_differences(recorded: dict[str, Any], bank: Any, run_dir: Path, task: str) -> None:
    """Refuse a resume on another bank than the run's, or on the same bank changed since the run started."""
    now = bank_identity(bank)
    new_run = f"start a new run on the changed bank with `vecrag train {task} {bank.path} --out NEW_RUN`"
    if now["path"] != recorded.get("path"):
        raise VecragError(f"the run was started on bank {recorded.get('path')}, not {now['path']}", path=run_dir,
                          hint=f"resume with the run's bank, or {new_run}")
    if plain(now["split"]) != plain(recorded.get("split")):
        was = recorded.get("split") or {}
        restore = (f"`vecrag bank split {bank.path} --seed {was.get('seed')} --ratios "
                   f"{','.join(str(r) for r in was.get('ratios') or [])}`")
        raise VecragError(f"the bank's split changed since the run started ({_split_text(was)} -> "
                          f"{_split_text(now['split'])}): training would continue on a different split (articles "
                          "that were val or test would be trained on) and pick its best checkpoint across two "
                          "validation sets", path=run_dir,
                          hint=f"restore the split with {restore} and resume, or {new_run}")
    changed = sorted(f for f in set(now["checksums"]) | set(recorded.get("checksums") or {})
                     if now["checksums"].get(f) != (recorded.get("checksums") or {}).get(f))
    sizes = (now["n_chunks"], now["dim"]) != (recorded.get("n_chunks"), recorded.get("dim"))
    if changed or sizes or plain(now["encoder"]) != plain(recorded.get("encoder")):
        what = ", ".join(changed) or "its size or encoder"
        raise VecragError(f"the bank changed since the run started ({what} differ from the manifest recorded "
                          f"in {RECORD}): training would continue on other data", path=run_dir,
                          hint=f"resume with the bank as it was when the run started, or {new_run}")


# ---- the whole protocol ------------------------------------------------------------------------------------
def on_main(fn: Callable[[], T]) -> T | None:
    """``fn()`` on rank 0 (the only one under a plain run); an error there is raised on every rank, so no rank
    waits for a collective that will never come."""
    from vecrag.train import distributed as dd

    result: T | None = None
    failure: BaseException | None = None
    if dd.is_main():
        try:
            result = fn()
        except Exception as e:
            failure = e
    message = dd.broadcast_object(None if failure is None else (str(failure) or type(failure).__name__))
    if failure is not None:
        raise failure
    if message is not None:
        raise VecragError(message)
    return result


class RunDir:
    """One run directory, claimed by one trainer for the duration of a ``with`` block."""

    def __init__(self, path: str | Path, task: str):
        self.path = Path(path)
        self.task = task
        self.lock = RunLock(self.path, task)
        self.events: list[dict[str, Any]] = []   # for RUN/log.jsonl once the trainer exists
        self._pending: Callable[[], None] | None = None

    @contextlib.contextmanager
    def claim(self, *, resume: bool, bank: Any, config: Any, allow_config_change: bool = False) -> Iterator[RunDir]:
        """Lock the directory (rank 0), check it can take this run, and unlock it when the block ends."""
        try:
            on_main(lambda: self._acquire_and_check(resume, bank, config, allow_config_change))
            yield self
        finally:
            self.lock.release()

    def _acquire_and_check(self, resume: bool, bank: Any, config: Any, allow_config_change: bool) -> None:
        self.lock.acquire()
        if self.lock.took_over is not None:
            self.events.append({"event": "stale_lock", "pid": self.lock.took_over.pid,
                                "host": self.lock.took_over.host, "started": self.lock.took_over.started})
        if resume:
            self._check_resume(bank, config, allow_config_change)
        else:
            refuse_existing_run(self.path, self.task)
            self._pending = lambda: self._write_record(bank, config)

    def _check_resume(self, bank: Any, config: Any, allow_config_change: bool) -> None:
        from vecrag.config import to_dict

        record = self.read_record()
        if record is None:
            log.warning("%s has no %s (started by an older vecrag): recording the bank and config now; changes "
                        "made before this resume cannot be detected", self.path, RECORD)
            self._pending = lambda: self._write_record(bank, config)
            return
        check_task(self.path, self.task)
        bank_differences(record.get("bank") or {}, bank, self.path, self.task)
        changes = config_changes(record.get("config") or {}, to_dict(config))
        if not changes:
            return
        listed = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        if not allow_config_change:
            raise VecragError(f"the config differs from the one the run started with ({listed})", path=self.path,
                              hint="resume without overrides (and with the run's own config.yaml), or accept the "
                                   "change with --allow-config-change (the run will then differ from an "
                                   "uninterrupted one), or start a new run with --out")
        log.warning("resuming with a changed config (%s): the run will differ from an uninterrupted one", listed)
        self.events.append({"event": "config_change", "changes": changes})
        self._pending = lambda: self._write_record(bank, config, changes=changes, previous=record)

    def read_record(self) -> dict[str, Any] | None:
        p = self.path / RECORD
        if not p.exists():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise VecragError(f"{RECORD} is unreadable ({e})", path=p,
                              hint="restore it from a backup, or start a new run with --out") from e
        if not isinstance(data, dict):
            raise VecragError(f"{RECORD} is not a JSON object", path=p,
                              hint="restore it from a backup, or start a new run with --out")
        return data

    def trainer(self, task: Any, cfg: Any, *, resume: bool, quiet: bool) -> Any:
        """The trainer of this claimed run, fresh or resumed from its checkpoints, with the run started
        (:meth:`start`) and the claim's events (a stale lock taken over, a config change) in its log."""
        from vecrag.train.loop import Trainer

        if resume:
            trainer = Trainer.resume(self.path, task, cfg.train, run_config=cfg, quiet=quiet)
        else:
            trainer = Trainer(task, cfg.train, self.path, run_config=cfg, quiet=quiet)
        self.start()
        for event in self.events:
            trainer.log_record("event", **event)
        return trainer

    def start(self) -> None:
        """Write what the run starts with (run.json, config.yaml): call it once the trainer is built (rank 0
        only writes; a no-op for a resume that changes nothing)."""
        from vecrag.train import distributed as dd

        if self._pending is not None and dd.is_main():
            self._pending()
        self._pending = None

    def _write_record(self, bank: Any, config: Any, *, changes: list[str] | None = None,
                      previous: dict[str, Any] | None = None) -> None:
        from vecrag.config import save_config, to_dict

        record = {"format": RECORD_FORMAT, "task": self.task, "bank": bank_identity(bank),
                  "config": plain(to_dict(config)), "created": (previous or {}).get("created", time.time())}
        history = list((previous or {}).get("config_changes", []))
        if changes:
            history.append({"time": time.time(), "changes": changes})
        if history:
            record["config_changes"] = history
        atomic_write_json(self.path / RECORD, record)  # first: a run.json without config.yaml is not a run
        save_config(config, self.path / CONFIG)
