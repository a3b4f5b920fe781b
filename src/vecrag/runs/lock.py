"""The run directory's lock: one trainer writes a run directory at a time; a lock left by a trainer that died
(its pid no longer runs on this host, or the pid now belongs to another process) is reported and taken over."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vecrag.errors import VecragError
from vecrag.fsutil import atomic_write_text
from vecrag.runs.layout import LOCK

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS: the O_EXCL lock alone
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


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
            try:
                self.run_dir.mkdir(parents=True)
                self.created_dir = True
            except FileExistsError:  # there already, or another trainer made it a moment ago: the lock decides
                pass
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
