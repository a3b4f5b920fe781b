"""The retriever end to end: presets, best checkpoint never below the anchor, SIGKILL + resume is bit-exact
(sync mining), the eval command's table and JSON, the mlp doc tower path, user errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_synthetic_bank, steps_without_gpu_sync
from vecrag.bank.sequences import Samples
from vecrag.bank.store import EncoderInfo, write_bank
from vecrag.cli import main
from vecrag.config import from_dict, load_config, validate_config
from vecrag.errors import VecragError
from vecrag.eval.retriever_eval import evaluate_retriever, format_misses, where_misses
from vecrag.fsutil import read_jsonl
from vecrag.index.search import ExactTorchIndex
from vecrag.train.checkpoint import load_file
from vecrag.train.loop import Trainer
from vecrag.train.retriever_task import RetrieverConfig, RetrieverTask, resolve_config

ROOT = Path(__file__).resolve().parents[2]
KILL_OVERRIDES = ["train.batch_size=16", "train.ckpt_every=8", "train.epochs=3", "train.log_every=10"]


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return make_synthetic_bank(tmp_path_factory.mktemp("retr") / "bank", n_articles=60, per_article=12)


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "vecrag.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_to_end(*args: str, timeout: float = 120) -> str:
    p = cli(*args)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def kill_when(p: subprocess.Popen, ready, delay: float, timeout: float = 60) -> bool:
    """SIGKILL ``p`` ``delay`` s after ``ready()`` first holds; False if it finished first."""
    t0 = time.monotonic()
    while not ready():
        if p.poll() is not None or time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.02)
    time.sleep(delay)
    if p.poll() is not None:
        return False
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=30)
    return True


@pytest.fixture(scope="module")
def full_run(bank, tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    run_to_end("train", "retriever", str(bank.path), "--config", "retriever-tiny", *KILL_OVERRIDES, "--out", str(run),
               "--quiet")
    return run


def test_presets_load_and_mirror_the_seed():
    tiny = load_config(RetrieverConfig, "retriever-tiny")
    cpu = load_config(RetrieverConfig, "retriever-cpu-test")
    gpu = load_config(RetrieverConfig, "retriever-gpu")
    default = load_config(RetrieverConfig, "retriever-default")
    assert tiny.mining.mode == "sync" and default.mining.mode == "sync"
    assert (default.model.anchor, default.model.alpha) == ("ewma", 0.5) == (gpu.model.anchor, gpu.model.alpha)
    assert (cpu.train.batch_size, cpu.train.grad_accum, cpu.train.epochs, cpu.mining.mode) == (8, 2, 3, "sync")
    assert gpu.mining.mode == "async" and gpu.train.epochs == 30 and gpu.loss.margin == 0.03
    assert gpu.train.batch_size * gpu.train.grad_accum >= 64
    assert gpu.mining.ttl >= gpu.mining.refresh_every
    assert gpu.mining.worker == "process"  # no GIL shared with the trainer (docs/benchmarks.md)
    assert (gpu.model.kind, gpu.model.layers) == ("transformer", 2)  # beat the GRU on wiki-full (results.md)
    assert gpu.loss.tau == 0.03 and default.loss.tau == 0.05  # 0.03 beat 0.05 on wiki-full (docs/results.md)


def test_context_beyond_the_transformers_positions_is_rejected_at_load():
    with pytest.raises(VecragError, match=r"train.context=64 must be <= model.max_len \(32"):
        load_config(RetrieverConfig, "retriever-gpu", ["train.context=64", "model.max_len=32"])
    assert load_config(RetrieverConfig, "retriever-gpu", ["train.context=64", "model.kind=gru",
                                                           "model.max_len=32"]).train.context == 64


def test_async_ttl_below_refresh_is_rejected():
    """Weights refreshed every 20 steps are up to 20 steps old: ttl 5 would discard most async results."""
    with pytest.raises(VecragError, match=r"mining.ttl=5 must be >= mining.refresh_every \(20\)"):
        load_config(RetrieverConfig, "retriever-gpu", ["mining.ttl=5", "mining.refresh_every=20"])
    cfg = load_config(RetrieverConfig, "retriever-gpu", ["mining.mode=sync", "mining.ttl=5"])  # ttl unused in sync
    assert cfg.mining.ttl == 5


def test_sigkill_and_resume_is_bit_exact(bank, full_run, tmp_path):
    run = tmp_path / "killed"
    ck = run / "checkpoints" / "index.json"

    # a random step: right after a random step checkpoint (of 8, 16, ..., 96 of 108 steps) plus up to ~4 steps
    # (by time: a fixed delay let a fast machine finish the run first)
    target = random.Random().randrange(8, 97, 8)

    def has_step_ckpt(at_least: int = target) -> bool:
        try:
            names = json.loads(ck.read_text())["files"]
            return any(n.startswith("step-") and int(n[5:].split(".")[0]) >= at_least for n in names)
        except (OSError, ValueError, KeyError):
            return False

    delay = random.Random().uniform(0.0, 0.1)
    p = cli("train", "retriever", str(bank.path), "--config", "retriever-tiny", *KILL_OVERRIDES, "--out", str(run),
            "--quiet")
    killed = kill_when(p, has_step_ckpt, delay)
    if killed and '"done"' in (run / "log.jsonl").read_text():
        killed = False  # the kill landed after the run's last record, as it exited: nothing left to resume
    if not killed:  # finished before the kill (a very fast machine): kill right at the first checkpoint instead
        run2 = tmp_path / "killed2"
        ck = run2 / "checkpoints" / "index.json"
        p = cli("train", "retriever", str(bank.path), "--config", "retriever-tiny", *KILL_OVERRIDES, "--out",
                str(run2), "--quiet")
        assert kill_when(p, lambda: has_step_ckpt(8), 0.0), "the run finished before it could be killed"
        run = run2
    assert not (run / "checkpoints" / "last.pt").exists() or "done" not in (run / "log.jsonl").read_text()
    run_to_end("train", "retriever", "--resume", str(run), "--quiet")
    resumed = [r for r in read_jsonl(run / "log.jsonl") if r.get("event") == "resume"]
    assert resumed and resumed[0]["step"] > 0
    a = load_file(full_run / "checkpoints" / "last.pt")
    b = load_file(run / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] and a["step"] > resumed[0]["step"]
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name
    assert a["extra"]["queue"] == b["extra"]["queue"]
    assert b["extra"]["counters"]["mined_sync"] > 0  # mining was part of the resumed run


def test_best_checkpoint_is_never_worse_than_the_anchor(bank, tmp_path):
    # a learning rate high enough to hurt: best-checkpoint selection must still keep the anchor's recall
    cfg = load_config(RetrieverConfig, "retriever-tiny", ["train.lr=3e-2", "train.epochs=2", "mining.mode=none",
                                                         "train.val_max_queries=0"])
    resolve_config(cfg, bank)
    task = RetrieverTask(bank, cfg)
    Trainer(task, cfg.train, tmp_path / "run", run_config=cfg, quiet=True).fit()
    task.close()
    (tmp_path / "run" / "bank.json").write_text(json.dumps({"encoder": bank.encoder}))
    rep = evaluate_retriever(tmp_path / "run", bank, split="val", checkpoint="best", seed=cfg.train.seed)
    tower = rep["methods"][rep["tower"]]
    anchor = rep["methods"][cfg.model.anchor]
    assert rep["n_queries"] == len(task.val) > 20
    assert tower["R@10"] >= anchor["R@10"]
    hist = [r for r in read_jsonl(tmp_path / "run" / "log.jsonl") if r["kind"] == "val"]
    assert hist[0]["R@10"] == hist[0]["baseline_R@10"]  # epoch 0 = the anchor, exactly


def test_eval_cli_table_and_json(full_run, capsys):
    assert main(["eval", "retriever", str(full_run), "--split", "test", "--max-queries", "20", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "tower-gru(best)" in out and "ewma-0.5" in out and "oracle" in out and "gap closed" in out
    rep = json.loads((full_run / "metrics" / "retriever-test-best.json").read_text())
    assert rep["n_queries"] == 20 and rep["hit_rules"] == {"exclude_context": True, "text_hits": True}
    row = rep["methods"][rep["tower"]]
    assert 0 <= row["R@1"] <= row["R@10"] <= row["R@1000"] <= 1 and len(row["R@10_ci"]) == 2
    assert (full_run / "metrics" / "retriever-test-best.txt").exists()
    assert "target's article but not the target" in out
    assert set(rep["misses"]) == {rep["tower"], "last"}  # the tower's and its anchor's top 10, split three ways
    for name, m in rep["misses"].items():
        assert m["n_queries"] == 20 and m["hit"] + m["same_article"] + m["elsewhere"] == pytest.approx(1.0)
        assert m["hit"] == pytest.approx(rep["methods"][name]["R@10"])
    # the tower's tally reads the recall search's results; with --ks too shallow for it, it searches on its own
    shallow = evaluate_retriever(full_run, split="test", max_queries=20, ks=(1, 10), baselines=True)
    assert shallow["misses"] == rep["misses"]


def test_where_misses_splits_the_top_k_by_article(tmp_path):
    # two articles of 4 chunks, chunk i = e_i: a query e_j ranks chunk j first; k=1, context L=1
    vecs = np.eye(8, dtype=np.float32)
    b = write_bank(tmp_path / "b", vecs, article_ids=np.repeat([0, 1], 4), positions=np.tile(np.arange(4), 2),
                   texts=[f"t{i}" for i in range(8)], titles={0: "A", 1: "B"}, encoder=EncoderInfo("x", 8))
    samples = Samples(np.array([2, 2, 2, 2, 5]), np.array([0, 0, 0, 0, 4]))
    q = vecs[[2, 3, 5, 1, 5]]  # hit, same article, elsewhere, the context chunk (dropped: then a tie), hit
    q[3] = vecs[1] + 0.5 * vecs[0] + 0.2 * vecs[2]  # after the dropped context chunk 1, chunk 0 (same article)
    m = where_misses(ExactTorchIndex(vecs), q, samples, 1, b, k=1)
    # the two same-article misses: chunk 3 (target 2: the chunk after it, +1) and chunk 0 (before the context 1)
    assert m == {"k": 1, "n_queries": 5, "hit": 0.4, "same_article": 0.4, "elsewhere": 0.2,
                 "article_chance": pytest.approx((4 * (1 / 3) + 1 / 3) / 5),
                 "offsets": {"+1": 0.5, "+2": 0.0, "+3..+5": 0.0, ">+5": 0.0, "before": 0.5},
                 "hit_forward": 0.6}  # query 3 without chunk 0 (before its context) finds target 2
    text = format_misses({"misses": {"tower": m}})
    assert "   50.00 |   0.00 |   0.00 |   0.00 |  50.00   (never going back: R@1 60.00)" in text


def test_mlp_doc_tower_and_transformer_train_and_validate(bank, tmp_path):
    cfg = from_dict(RetrieverConfig, {"val_backend": "torch", "model": {"kind": "transformer", "doc": "mlp",
                                                                       "hidden": 16, "heads": 2, "doc_hidden": 16},
                                      "train": {"epochs": 1, "batch_size": 32, "max_steps": 6, "device": "cpu",
                                                "context": 4, "val_max_queries": 40, "tensorboard": False},
                                      "mining": {"schedule": "0:4@0.0-0.99", "k": 16}})
    validate_config(cfg)
    resolve_config(cfg, bank)
    task = RetrieverTask(bank, cfg)
    res = Trainer(task, cfg.train, tmp_path / "run", run_config=cfg, quiet=True).fit()
    task.close()
    assert res["step"] == 6 and task.counters["mined_sync"] == 6
    doc_w = task.model.doc.mlp[2].weight
    assert torch.count_nonzero(doc_w) > 0  # the doc tower learned (and validation re-encoded the bank)


@pytest.mark.parametrize("args,msg", [
    (["mining.schedule=0-2:none;4-5:4@0.1-0.2"], "gap in curriculum"),
    (["mining.mode=fast"], "mining.mode"),
    (["model.kind=cnn"], "unknown query tower"),
])
def test_user_errors_exit_2(bank, tmp_path, capsys, args, msg):
    rc = main(["train", "retriever", str(bank.path), "--config", "retriever-tiny", *args, "--out",
               str(tmp_path / "r")])
    assert rc == 2 and msg in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
def test_training_steps_never_wait_for_the_gpu(bank, tmp_path):
    """A retriever step (ewma anchor, in-batch + queue + mined negatives, bf16, fused AdamW) makes no host-GPU
    sync between log steps: on the H200 the step is launch-bound, and one sync a step (the ewma anchor's base
    was a tensor built on the GPU) let a miner's kernels delay every step (docs/bugs-and-fixes.md)."""
    cfg = load_config(RetrieverConfig, "retriever-tiny", ["train.device=cuda", "model.anchor=ewma",
                                                         "train.log_every=1000", "mining.mode=none"])
    resolve_config(cfg, bank)
    task = RetrieverTask(bank, cfg)
    table = np.random.default_rng(0).integers(0, bank.n, (task.n_train, 4))
    table[::3, -1] = -1  # padding, as the miners hand it over
    task._mined = lambda idx, step: table[np.asarray(idx)]
    tr = Trainer(task, cfg.train, tmp_path / "run", run_config=cfg, quiet=True)
    steps_without_gpu_sync(tr)
    assert tr.step == 6 and len(task.queue) == 32
