"""A run directory belongs to one run (hostile-input cases 72, 73, 78, 79, 80).

Each case asserts the exit code, that no traceback is printed, the message's key words, and that nothing
already written was lost or overwritten (every file of the run hashed before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import make_synthetic_bank
from vecrag.cli import main
from vecrag.fsutil import read_jsonl
from vecrag.runs.layout import LOCK
from vecrag.runs.lock import LockInfo, boot_id, proc_start
from vecrag.train.checkpoint import state_order

ROOT = Path(__file__).resolve().parents[2]
RETR = ["--config", "retriever-tiny", "train.epochs=1", "train.val_max_queries=50"]
LVM = ["--config", "lvm-tiny", "train.epochs=2", "train.batch_size=16", "train.ckpt_every=4", "train.keep_last=1000",
       "train.val_max_queries=50"]


# ---- helpers ----------------------------------------------------------------------------------------------------
def digest(run: Path) -> dict[str, str]:
    """sha256 of every file under ``run`` (relative path -> digest)."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def train(capsys, *argv: str) -> tuple[int, str]:
    """``vecrag train ...`` in this process: (exit code, stderr); never a traceback."""
    rc = main(["train", *argv, "--quiet"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def refused(capsys, *argv: str) -> str:
    rc, err = train(capsys, *argv)
    assert rc == 2, err
    assert err.startswith("vecrag: error:") and "fix:" in err
    return err


def events(run: Path, name: str) -> list[dict]:
    return [r for r in read_jsonl(run / "log.jsonl") if r.get("event") == name]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "vecrag.cli", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def write_lock(run: Path, pid: int, *, host: str | None = None, start: int | None = None) -> None:
    info = LockInfo(pid=pid, host=host or socket.gethostname(), started=time.time() - 60, command="vecrag train x",
                    boot_id=boot_id(), proc_start=proc_start(pid) if start is None else start, token="other")
    (run / LOCK).write_text(info.dumps())


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return make_synthetic_bank(tmp_path_factory.mktemp("hostile") / "bank", n_articles=30, per_article=8, dim=16)


@pytest.fixture(scope="module")
def retriever_run(bank, tmp_path_factory):
    run = tmp_path_factory.mktemp("ret") / "run"
    assert main(["train", "retriever", str(bank.path), *RETR, "--out", str(run), "--quiet"]) == 0
    return run


@pytest.fixture(scope="module")
def lvm_run(bank, tmp_path_factory):
    run = tmp_path_factory.mktemp("lvm") / "run"
    assert main(["train", "lvm", str(bank.path), *LVM, "--out", str(run), "--quiet"]) == 0
    return run


# ---- 1. one trainer per run directory ---------------------------------------------------------------------------
def test_two_trainers_on_one_out_at_once_only_one_succeeds(bank, tmp_path):
    """Rows 78/79: two `train retriever` with the same --out and different configs, started together."""
    run = tmp_path / "dup"
    a = cli("train", "retriever", str(bank.path), *RETR, "train.epochs=2", "--out", str(run), "--quiet")
    b = cli("train", "retriever", str(bank.path), *RETR, "model.hidden=16", "--out", str(run),
            "--quiet")
    try:
        outs = [p.communicate(timeout=180) for p in (a, b)]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    codes = [a.returncode, b.returncode]
    assert sorted(codes) == [0, 2], [o[1][-1500:] for o in outs]
    loser_err = outs[codes.index(2)][1]
    assert "Traceback" not in loser_err
    assert "another trainer is writing this run directory" in loser_err or "already holds a run" in loser_err
    assert "--resume" in loser_err and "another --out" in loser_err
    winner_hidden = 32 if codes[0] == 0 else 16
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["model"]["hidden"] == winner_hidden
    assert json.loads((run / "run.json").read_text())["config"]["model"]["hidden"] == winner_hidden
    assert len(events(run, "start")) == 1 and len(events(run, "done")) == 1  # one run wrote the log
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["config"]["model"]["hidden"] == winner_hidden
    assert not (run / LOCK).exists()


def test_a_live_lock_refuses_every_trainer_and_a_stale_one_is_taken_over(bank, retriever_run, tmp_path, capsys,
                                                                        caplog):
    run = copy_run(retriever_run, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(run, holder.pid)
        before = digest(run)
        for argv in (["retriever", "--resume", str(run)],
                     ["retriever", str(bank.path), *RETR, "--out", str(run)],
                     ["lvm", "--resume", str(run)]):
            err = refused(capsys, *argv)
            assert "another trainer is writing this run directory" in err or "not `vecrag train lvm`" in err
            if "another trainer" in err:
                assert f"pid {holder.pid} on this host" in err and f"kill {holder.pid}" in err and "--resume" in err
        assert digest(run) == before  # the lock and every file untouched
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, reported and taken over; the run resumes (it had finished: no-op)
    rc, err = train(capsys, "retriever", "--resume", str(run))
    assert rc == 0, err
    assert "stale lock" in caplog.text and f"pid {holder.pid}" in caplog.text
    stale = events(run, "stale_lock")
    assert len(stale) == 1 and stale[0]["pid"] == holder.pid
    assert not (run / LOCK).exists()
    for name, h in before.items():  # nothing lost: every file is still there (last.pt is rewritten)
        assert (run / name).exists() or name == LOCK, name
        if name.startswith("checkpoints/") and name.endswith(".pt") and "last" not in name:
            assert digest(run)[name] == h, name


def test_lock_of_a_reused_pid_is_stale_and_a_lock_from_another_host_is_refused(retriever_run, tmp_path, capsys):
    me = os.getpid()
    assert LockInfo(pid=me, host=socket.gethostname(), started=0, proc_start=proc_start(me)).stale() is False
    if proc_start(me) is not None:  # Linux: the pid runs, but it is not the process that took the lock
        assert LockInfo(pid=me, host=socket.gethostname(), started=0, proc_start=proc_start(me) + 1).stale() is True
    run = copy_run(retriever_run, tmp_path / "run")
    write_lock(run, 1, host="elsewhere.example")
    before = digest(run)
    err = refused(capsys, "retriever", "--resume", str(run))
    assert "another machine" in err and "host elsewhere.example" in err and f"delete {run / LOCK}" in err
    assert digest(run) == before


# ---- 2. a new run never writes over an existing one ------------------------------------------------------------
@pytest.mark.parametrize("task", ["retriever", "lvm"])
def test_out_into_a_directory_holding_a_run_is_refused(task, bank, retriever_run, lvm_run, tmp_path, capsys):
    run = copy_run(retriever_run if task == "retriever" else lvm_run, tmp_path / "run")
    before = digest(run)
    config = RETR if task == "retriever" else LVM
    err = refused(capsys, task, str(bank.path), *config, "train.lr=0.01", "--out", str(run))
    assert "already holds a run" in err and f"vecrag train {task} --resume {run}" in err and "another --out" in err
    assert digest(run) == before
    # a run killed before its first checkpoint: config.yaml alone is a run too
    for p in (run / "checkpoints").glob("*.pt"):
        p.unlink()
    before = digest(run)
    err = refused(capsys, task, str(bank.path), *config, "--out", str(run))
    assert "already holds a run (config.yaml)" in err
    assert digest(run) == before


def test_out_under_a_file_is_a_clean_error(bank, tmp_path, capsys):
    (tmp_path / "afile").write_text("mine")
    err = refused(capsys, "lvm", str(bank.path), *LVM, "--out", str(tmp_path / "afile" / "run"))
    assert "cannot lock the run directory" in err
    assert (tmp_path / "afile").read_text() == "mine"


# ---- 3. --resume checks the bank and the config -----------------------------------------------------------------
def test_resume_after_the_bank_was_resplit_is_refused(tmp_path, capsys):
    """Row 80: `vecrag bank split BANK --seed 7` between a run and its resume."""
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=30, per_article=8, dim=16)
    run = tmp_path / "run"
    rc, err = train(capsys, "retriever", str(bank.path), *RETR, "--out", str(run))
    assert rc == 0, err
    assert main(["bank", "split", str(bank.path), "--seed", "7"]) == 0
    before = digest(run)
    for extra in ([], ["--allow-config-change"]):  # the flag accepts a changed config, never a changed bank
        err = refused(capsys, "retriever", "--resume", str(run), *extra)
        assert "split changed since the run started" in err and "seed 0" in err and "seed 7" in err
        assert f"vecrag bank split {bank.path} --seed 0 --ratios 0.9,0.05,0.05" in err
    assert digest(run) == before
    assert main(["bank", "split", str(bank.path), "--seed", "0"]) == 0  # the old split back: resume accepted
    rc, err = train(capsys, "retriever", "--resume", str(run))
    assert rc == 0, err


def test_resume_on_changed_bank_files_is_refused(tmp_path, capsys):
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=30, per_article=8, dim=16)
    run = tmp_path / "run"
    rc, err = train(capsys, "lvm", str(bank.path), *LVM, "train.epochs=1", "--out", str(run))
    assert rc == 0, err
    make_synthetic_bank(tmp_path / "bank", n_articles=30, per_article=8, dim=16, seed=1)  # same shape, new vectors
    before = digest(run)
    err = refused(capsys, "lvm", "--resume", str(run), "--allow-config-change")
    assert "the bank changed since the run started" in err and "vectors.npy" in err
    assert digest(run) == before


def test_resume_with_a_changed_config_needs_the_flag(retriever_run, lvm_run, tmp_path, capsys, caplog):
    run = copy_run(retriever_run, tmp_path / "ret")
    before = digest(run)
    err = refused(capsys, "retriever", "--resume", str(run), "train.lr=0.01")
    assert "overrides train.lr=0.01 would change it" in err and "--allow-config-change" in err
    assert digest(run) == before
    # an edited config.yaml (LVM: --resume takes no overrides) is noticed too
    run = copy_run(lvm_run, tmp_path / "lvm")
    cfg_path = run / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("epochs: 2", "epochs: 3"))
    before = digest(run)
    err = refused(capsys, "lvm", "--resume", str(run))
    assert "config differs from the one the run started with (train.epochs: 2 -> 3)" in err
    assert "--allow-config-change" in err
    assert digest(run) == before
    rc, err = train(capsys, "lvm", "--resume", str(run), "--allow-config-change")
    assert rc == 0, err
    assert "changed config (train.epochs: 2 -> 3)" in caplog.text
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["train"]["epochs"] == 3 and record["config_changes"][0]["changes"] == [
        "train.epochs: 2 -> 3"]
    assert events(run, "config_change")[0]["changes"] == ["train.epochs: 2 -> 3"]
    rc, err = train(capsys, "lvm", "--resume", str(run))  # the accepted config is now the run's
    assert rc == 0, err
    err = refused(capsys, "lvm", "--resume", str(run), "train.epochs=4")
    assert "no BANK or overrides" in err
    err = refused(capsys, "lvm", str(tmp_path / "b"), *LVM, "--out", str(tmp_path / "new"), "--allow-config-change")
    assert "--allow-config-change goes with --resume" in err


def test_run_of_an_older_vecrag_is_recorded_on_its_first_resume(retriever_run, tmp_path, capsys, caplog):
    run = copy_run(retriever_run, tmp_path / "run")
    (run / "run.json").unlink()
    rc, err = train(capsys, "retriever", "--resume", str(run))
    assert rc == 0, err
    assert "has no run.json" in caplog.text
    assert json.loads((run / "run.json").read_text())["bank"]["split"]["seed"] == 0


# ---- 4. a damaged or missing checkpoint index is rebuilt, never a restart from step 0 ----------------------------
def cut_after(ref: Path, run: Path, name: str) -> None:
    """``run`` = ``ref`` as a kill right after writing checkpoint ``name`` would have left it."""
    copy_run(ref, run)
    index = json.loads((ref / "checkpoints" / "index.json").read_text())["files"]
    keep = {n: e for n, e in index.items() if e["seq"] <= index[name]["seq"]}
    (run / "checkpoints" / "index.json").write_text(json.dumps({"files": keep}))
    for f in (run / "checkpoints").glob("*.pt"):
        if f.name not in keep:
            f.unlink()
    done = [i for i, r in enumerate(read_jsonl(run / "log.jsonl")) if r.get("event") == "done"]
    lines = (run / "log.jsonl").read_text().splitlines(keepends=True)
    (run / "log.jsonl").write_text("".join(lines[:done[0]] if done else lines))


@pytest.mark.parametrize("damage", ["garbage", "deleted"])
def test_a_damaged_or_missing_index_is_rebuilt_and_resume_is_bit_exact(damage, lvm_run, tmp_path, capsys, caplog):
    """Rows 72/73: index.json damaged or deleted, every checkpoint intact."""
    run = tmp_path / "run"
    cut_after(lvm_run, run, "step-8.pt")
    index = run / "checkpoints" / "index.json"
    if damage == "garbage":
        index.write_bytes(os.urandom(300))
    else:
        index.unlink()
    kept = {n: h for n, h in digest(run).items() if n.endswith(".pt")}
    rc, err = train(capsys, "lvm", "--resume", str(run))
    assert rc == 0, err
    assert "rebuilt it from the" in caplog.text and "starting the run from the beginning" not in caplog.text
    rebuilt = events(run, "index_rebuilt")
    assert len(rebuilt) == 1 and rebuilt[0]["reason"] == ("damaged" if damage == "garbage" else "missing")
    assert set(kept) <= {f"checkpoints/{n}" for n in rebuilt[0]["files"]}
    resumed = events(run, "resume")
    assert len(resumed) == 1 and resumed[0]["checkpoint"] == "step-8.pt" and resumed[0]["step"] == 8
    assert (run / "checkpoints" / "index.json.damaged").exists() == (damage == "garbage")
    want = torch.load(lvm_run / "checkpoints" / "last.pt", weights_only=True)
    got = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert got["step"] == want["step"] and got["trainer"]["finished"]
    for k, t in want["model"].items():
        assert torch.equal(t, got["model"][k]), k


def test_rebuilt_index_orders_states_by_progress():
    def state(step: int, epoch: int, batch: int, validated: int, finished: bool = False) -> dict:
        return {"step": step, "epoch": epoch, "batch": batch, "trainer": {"validated": validated,
                                                                          "finished": finished}}

    files = {"best.pt": state(0, 0, 0, 0), "step-4.pt": state(4, 0, 4, 0), "epoch-1-preval.pt": state(6, 0, 6, 0),
             "step-6.pt": state(6, 0, 6, 0), "last.pt": state(6, 1, 0, 1), "step-8.pt": state(8, 1, 2, 1)}
    order = sorted(files, key=lambda n: state_order(n, files[n]))
    assert order == ["best.pt", "step-4.pt", "epoch-1-preval.pt", "step-6.pt", "last.pt", "step-8.pt"]
    end = state(12, 2, 0, 2, True)
    assert max(["swa.pt", "best.pt", "last.pt"], key=lambda n: state_order(n, end)) == "last.pt"


def test_a_sigkilled_trainer_leaves_a_lock_that_counts_as_stale(bank, tmp_path):
    """A SIGKILLed trainer cannot remove its lock: the next --resume must not be refused by it."""
    run = tmp_path / "run"
    p = cli("train", "retriever", str(bank.path), *RETR, "train.epochs=500", "--out", str(run), "--quiet")
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "index.json").exists() and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        alive = p.poll() is None
        if alive:
            p.send_signal(signal.SIGKILL)
    finally:
        if p.poll() is None:
            p.kill()
        _, err = p.communicate(timeout=30)  # reaped: a zombie would still answer kill(pid, 0)
    assert alive, err[-2000:]
    held = LockInfo.parse((run / LOCK).read_text())
    assert held is not None and held.pid == p.pid and held.stale() is True


def test_trainers_racing_to_create_the_run_directory_get_the_lock_message(tmp_path):
    """Many trainers start on a --out that does not exist yet: the directory's creation is no error (a trainer
    whose mkdir lost the race used to fail with "cannot lock the run directory (File exists)"); exactly one takes
    the lock and every other one is told a trainer is writing the run."""
    import threading

    from vecrag.errors import VecragError
    from vecrag.runs.lock import RunLock

    for attempt in range(5):
        run = tmp_path / f"race{attempt}" / "run"
        gate, won, errors = threading.Barrier(8), [], []

        def start(run=run, gate=gate, won=won, errors=errors) -> None:
            lock = RunLock(run, "lvm")
            gate.wait()
            try:
                lock.acquire()
                won.append(lock)
            except VecragError as err:
                errors.append(str(err))

        threads = [threading.Thread(target=start) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(won) == 1 and len(errors) == 7, errors
        assert all("another trainer is writing this run directory" in e for e in errors), errors
        won[0].release()
