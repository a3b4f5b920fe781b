"""The run directory: what it holds, who may write it, and what the run was started with.

Layout::

    RUN/
      lock           {pid, host, boot_id, proc_start, started, command, token}: present while a trainer writes RUN
      run.json       the run's identity, written when it starts: task, the bank (resolved path, size, encoder,
                     split seed and ratios, the manifest's checksums) and the resolved config
      config.yaml    the resolved config (what --resume loads)
      bank.json      retriever runs: path, n, dim and encoder of the bank (read by `vecrag eval retriever`)
      log.jsonl      train / val / mining / event records
      checkpoints/   see vecrag.train.checkpoint
      tb/            TensorBoard scalars

A run directory belongs to one run. :meth:`RunDir.claim` takes the lock (rank 0 under torchrun) for the
whole training: a second trainer on the same directory is refused while the first runs; a lock left behind
by a trainer that died (its pid no longer runs on this host, or the pid now belongs to another process) is
reported and taken over. Under the lock a new run (``--out``) is refused in a directory that already holds
one, and ``--resume`` is refused when the bank (path, size, split, checksums) differs from the one recorded
in run.json, or the config does without ``--allow-config-change`` (a changed bank is never accepted).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vecrag.errors import VecragError
from vecrag.fsutil import atomic_write_json, atomic_write_text

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS: the O_EXCL lock alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
T = TypeVar("T")

LOCK = "lock"
RECORD = "run.json"
CONFIG = "config.yaml"
CHECKPOINTS = "checkpoints"
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


# ---- the lock -------------------------------------------------------------------------------------------------
def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def boot_id() -> str | None:
    """This boot of this machine (Linux): pids of an earlier boot mean nothing."""
    return _read_text("/proc/sys/kernel/random/boot_id")


def proc_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    stat = _read_text(f"/proc/{pid}/stat")
    if not stat or ")" not in stat:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def pid_running(pid: int) -> bool:
    """Whether ``pid`` runs on this host (a zombie, killed but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return True
    stat = _read_text(f"/proc/{pid}/stat")
    if stat and ")" in stat:
        return stat[stat.rindex(")") + 2:][:1] not in ("Z", "X")
    return True


@dataclass
class LockInfo:
    pid: int
    host: str
    started: float
    command: str = ""
    boot_id: str | None = None
    proc_start: int | None = None
    token: str = ""

    @classmethod
    def mine(cls) -> LockInfo:
        return cls(pid=os.getpid(), host=socket.gethostname(), started=time.time(),
                   command=" ".join(["vecrag", *sys.argv[1:]])[:500], boot_id=boot_id(),
                   proc_start=proc_start(os.getpid()), token=uuid.uuid4().hex)

    @classmethod
    def parse(cls, text: str) -> LockInfo | None:
        try:
            d = json.loads(text)
            return cls(pid=int(d["pid"]), host=str(d["host"]), started=float(d["started"]),
                       command=str(d.get("command", "")), boot_id=d.get("boot_id"),
                       proc_start=None if d.get("proc_start") is None else int(d["proc_start"]),
                       token=str(d.get("token", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def dumps(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True) + "\n"

    def stale(self) -> bool | None:
        """True: its trainer is gone; False: it still runs; None: another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        here = boot_id()
        if self.boot_id and here and self.boot_id != here:
            return True  # the machine rebooted since
        if not pid_running(self.pid):
            return True
        now = proc_start(self.pid)
        return self.proc_start is not None and now is not None and now != self.proc_start  # pid reused

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        where = "this host" if self.host == socket.gethostname() else f"host {self.host}"
        cmd = f", running `{self.command}`" if self.command else ""
        return f"pid {self.pid} on {where}, started {when}{cmd}"


class RunLock:
    """``RUN/lock``, created with O_EXCL and held while one trainer writes ``RUN``.

    Acquiring and releasing happen under an advisory ``flock`` of the directory itself, so two trainers that
    find the same stale lock cannot both take it over (where flock is unavailable, O_EXCL alone decides).
    """

    def __init__(self, run_dir: str | Path, task: str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self.task = task
        self.info: LockInfo | None = None
        self.took_over: LockInfo | None = None   # the stale lock this one replaced
        self.created_dir = False

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        if fcntl is None:
            yield
            return
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:  # e.g. NFS without flock: O_EXCL alone decides
                log.debug("no flock on %s (%s); relying on O_EXCL", self.run_dir, e)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def acquire(self) -> None:
        mine = LockInfo.mine()
        try:
            if not self.run_dir.exists():
                self.run_dir.mkdir(parents=True)
                self.created_dir = True
            with self._guard():
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    self._take_over_stale(mine)
                else:
                    self._write_new(fd, mine)
        except OSError as e:
            raise VecragError(f"cannot lock the run directory ({e.strerror or e})", path=self.path,
                              hint="choose an --out where you can write files") from e
        self.info = mine

    def _write_new(self, fd: int, mine: LockInfo) -> None:
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(mine.dumps())
                f.flush()
                os.fsync(f.fileno())
        except OSError:  # e.g. disk full: no half-written lock left behind
            self.path.unlink(missing_ok=True)
            raise

    def _take_over_stale(self, mine: LockInfo) -> None:
        text = _read_text(str(self.path)) or ""
        held = LockInfo.parse(text)
        if held is None:
            log.warning("%s is unreadable (%r: a trainer died while creating it); taking it over", self.path,
                        text[:80])
        else:
            self._refuse_live(held)
            log.warning("%s: stale lock, its trainer no longer runs (%s); taking it over", self.path,
                        held.describe())
            self.took_over = held
        atomic_write_text(self.path, mine.dumps())

    def _refuse_live(self, held: LockInfo) -> None:
        stale = held.stale()
        if stale:
            return
        if stale is None:
            raise VecragError(f"the run directory is locked by a trainer on another machine: {held.describe()}; "
                              "this machine cannot tell whether it still runs", path=self.run_dir,
                              hint=f"if that trainer has ended, delete {self.path} and run the command again; to "
                                   "train another model at the same time, choose another --out")
        raise VecragError(f"another trainer is writing this run directory: {held.describe()}", path=self.run_dir,
                          hint=f"wait for it to finish, or stop it (kill {held.pid}) and continue the run with "
                               f"`vecrag train {self.task} --resume {self.run_dir}`; to train another model at "
                               "the same time, choose another --out")

    def refuse_if_held(self) -> None:
        """Raise when a live trainer holds the lock (a read-only look, for an early refusal)."""
        held = LockInfo.parse(_read_text(str(self.path)) or "")
        if held is not None:
            self._refuse_live(held)

    def release(self) -> None:
        if self.info is None:
            return
        with contextlib.suppress(OSError), self._guard():
            held = LockInfo.parse(_read_text(str(self.path)) or "")
            if held is not None and held.token == self.info.token:
                self.path.unlink()
        self.info = None
        if self.created_dir:  # nothing was written (refused or failed before the run started): leave no trace
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()  # only when empty


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
