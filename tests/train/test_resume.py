"""Exact resume, proven: SIGKILL a CPU LVM run (`vecrag train lvm`, a subprocess) at a random step, resume it
with --resume, and compare the final weights with an uninterrupted run bit for bit."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import make_synthetic_bank
from vecrag.bank.sequences import make_samples
from vecrag.fsutil import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES = ["train.epochs=3", "train.batch_size=16", "train.log_every=1", "train.ckpt_every=4",
             "train.keep_last=2", "train.torch_threads=1", "train.seed=5", "model.kind=gru", "model.dropout=0.1",
             "loss.w_nce=0.1"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vecrag.cli", *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["trainer"]["finished"]
    return state["model"]


def test_sigkill_at_random_step_then_resume_is_bit_identical(tmp_path):
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=60, per_article=12)
    ref, run = tmp_path / "ref", tmp_path / "killed"
    n_train = len(make_samples(bank, "train", min_context=1))
    total = 3 * math.ceil(n_train / 16)  # epochs x batches (grad_accum 1)
    # in the first half: the poller below reads the log every 20 ms, and on an idle machine the last few steps
    # ran in less than that, so a kill aimed 6 steps before the end could land after the last step
    kill_at = random.Random(1234).randrange(3, total // 2)

    def start(out: Path) -> subprocess.Popen:
        return subprocess.Popen(cli("train", "lvm", str(bank.path), "--config", "lvm-tiny", *OVERRIDES, "--out",
                                    str(out), "--quiet"), env=env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    reference, proc = start(ref), start(run)  # side by side (1 thread each): the uninterrupted run and the victim
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            steps = [r["step"] for r in read_jsonl(run / "log.jsonl") if r["kind"] == "train"]
            if steps and max(steps) >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
        assert reference.wait(timeout=120) == 0
    finally:
        for p in (proc, reference):
            if p.poll() is None:
                p.kill()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_step = max(r["step"] for r in read_jsonl(run / "log.jsonl") if r["kind"] == "train")
    assert killed_step < total

    out = subprocess.run(cli("train", "lvm", "--resume", str(run), "--quiet"), env=env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    resumed = [r for r in read_jsonl(run / "log.jsonl") if r.get("event") == "resume"]
    assert len(resumed) == 1 and 0 <= resumed[0]["step"] <= killed_step

    a, b = final_weights(ref), final_weights(run)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after kill at step {killed_step} and resume"
    best_a = torch.load(ref / "checkpoints" / "best.pt", weights_only=True)
    best_b = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best_a["step"] == best_b["step"] and all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in a)
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert summary["steps"] == total


def test_resume_refuses_overrides_and_missing_runs(tmp_path):
    out = subprocess.run(cli("train", "lvm", "--resume", str(tmp_path / "nope")), env=env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "config.yaml" in out.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("train: {epochs: 1}\n")
    out = subprocess.run(cli("train", "lvm", "--resume", str(tmp_path / "run"), "train.lr=1"), env=env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no BANK or overrides" in out.stderr


def test_resume_from_each_kind_of_checkpoint_is_bit_identical(tmp_path):
    """The SIGKILL test lands wherever the timing puts it; this one resumes, deterministically, from the
    checkpoints a kill can leave as the newest: a step checkpoint in the first epoch, an epoch's pre-validation
    checkpoint (killed during validation), and the first step checkpoint after it (mid-epoch, past a val)."""
    import shutil

    bank = make_synthetic_bank(tmp_path / "bank", n_articles=60, per_article=12)
    ref = tmp_path / "ref"
    overrides = [o for o in OVERRIDES if not o.startswith("train.keep_last")] + ["train.keep_last=1000"]
    subprocess.run(cli("train", "lvm", str(bank.path), "--config", "lvm-tiny", *overrides, "--out", str(ref),
                       "--quiet"), env=env(), cwd=tmp_path, check=True, capture_output=True, timeout=120)
    want = final_weights(ref)
    index = json.loads((ref / "checkpoints" / "index.json").read_text())["files"]
    seq = {n: e["seq"] for n, e in index.items()}
    after_preval = min((n for n in seq if n.startswith("step-") and seq[n] > seq["epoch-1-preval.pt"]), key=seq.get)
    for name in ("step-8.pt", "epoch-1-preval.pt", after_preval):
        run = tmp_path / f"from-{name}"
        shutil.copytree(ref, run)
        keep = {n: e for n, e in index.items() if e["seq"] <= seq[name]}  # as if killed right after `name`
        (run / "checkpoints" / "index.json").write_text(json.dumps({"files": keep}))
        for f in (run / "checkpoints").glob("*.pt"):
            if f.name not in keep:
                f.unlink()
        out = subprocess.run(cli("train", "lvm", "--resume", str(run), "--quiet"), env=env(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        resumed = [r for r in read_jsonl(run / "log.jsonl") if r.get("event") == "resume"]
        assert resumed[-1]["checkpoint"] == name
        got = final_weights(run)
        for k in want:
            assert torch.equal(want[k], got[k]), f"{k} differs after resuming from {name}"
