"""The shared training loop, checkpoints and configs, on a small linear-regression task (CPU, seconds)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from vecrag.config import TrainConfig, apply_overrides, load_config, parse_overrides, save_config, to_dict
from vecrag.errors import VecragError
from vecrag.fsutil import read_jsonl
from vecrag.train import checkpoint as ckmod
from vecrag.train.checkpoint import CheckpointDir, load_file
from vecrag.train.loop import Task, Trainer, lr_at, seed_everything


class RegressionTask:
    """y = x @ W_true + noise; the model is a linear layer (with dropout, so the torch RNG matters)."""

    name = "regression"

    def __init__(self, n: int = 96, dim: int = 6, seed: int = 0, fail_at_step: int | None = None):
        g = np.random.default_rng(seed)
        self.x = torch.tensor(g.standard_normal((n + 32, dim)), dtype=torch.float32)
        w = torch.tensor(g.standard_normal((dim, 2)), dtype=torch.float32)
        self.y = self.x @ w + 0.1 * torch.tensor(g.standard_normal((n + 32, 2)), dtype=torch.float32)
        self.n_train = n
        self.model = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(dim, 2))
        self.fail_at_step = fail_at_step
        self.calls = 0
        self.seen: list[np.ndarray] = []

    def attach(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def loss(self, idx: np.ndarray, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if self.fail_at_step is not None and step == self.fail_at_step:
            raise RuntimeError("injected crash")
        self.calls += 1
        self.seen.append(idx.copy())
        i = torch.as_tensor(idx)
        err = self.model(self.x[i]) - self.y[i]
        return (err**2).mean(), {"abs_err": float(err.detach().abs().mean())}

    def validate(self, epoch: int) -> dict[str, float]:
        err = self.model(self.x[self.n_train:]) - self.y[self.n_train:]
        return {"neg_mse": -float((err**2).mean()), "baseline_zero": -float((self.y[self.n_train:] ** 2).mean())}

    def extra_state(self) -> dict:
        return {"calls": self.calls}

    def load_extra_state(self, d: dict) -> None:
        self.calls = int(d.get("calls", 0))

    def stats(self) -> dict[str, float]:
        return {"calls": float(self.calls)}

    def close(self) -> None:
        pass


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=8, lr=0.05, lr_min=0.001, warmup_steps=2, log_every=2, ckpt_every=3,
                keep_last=2, early_stop_metric="neg_mse", torch_threads=1, tensorboard=False, seed=7)
    base.update(kw)
    c = TrainConfig(**base)
    c.validate()
    return c


def run(tmp, c: TrainConfig, **task_kw) -> tuple[RegressionTask, Trainer]:
    seed_everything(c.seed)
    task = RegressionTask(**task_kw)
    tr = Trainer(task, c, tmp, quiet=True)
    tr.fit()
    return task, tr


def test_task_satisfies_protocol():
    assert isinstance(RegressionTask(), Task)


def test_lr_schedule_values():
    kw = dict(lr=1.0, lr_min=0.1, warmup=4, total=14)
    assert [lr_at(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, **kw) == pytest.approx(1.0)
    assert lr_at(9, **kw) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 5 / 9)))
    assert lr_at(13, **kw) == pytest.approx(0.1)   # the last step reaches lr_min
    assert lr_at(50, **kw) == pytest.approx(0.1)   # and stays there
    vals = [lr_at(s, **kw) for s in range(4, 14)]
    assert all(a >= b for a, b in zip(vals, vals[1:], strict=False))
    assert lr_at(0, lr=1.0, lr_min=0.0, warmup=0, total=10) == 1.0


def test_sampler_is_deterministic_and_covers_every_sample(tmp_path):
    task = RegressionTask(n=50)
    tr = Trainer(task, cfg(batch_size=8), tmp_path, quiet=True)
    ep0 = np.concatenate([tr.batch_at(0, i) for i in range(tr.n_batches)])
    assert sorted(ep0.tolist()) == list(range(50)) and tr.n_batches == 7
    tr2 = Trainer(RegressionTask(n=50), cfg(batch_size=8), tmp_path / "b", quiet=True)
    assert np.array_equal(tr2.batch_at(1, 3), tr.batch_at(1, 3))
    assert not np.array_equal(tr.permutation(0), tr.permutation(1))
    with pytest.raises(IndexError):
        tr.batch_at(0, 7)


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    # dropout off: the two runs draw different dropout masks otherwise
    a_task = RegressionTask()
    b_task = RegressionTask()
    b_task.model.load_state_dict(a_task.model.state_dict())
    for t in (a_task, b_task):
        t.model[0].p = 0.0
    Trainer(a_task, cfg(batch_size=8, grad_accum=2, ckpt_every=0, clip_norm=0.0), tmp_path / "a", quiet=True).fit()
    Trainer(b_task, cfg(batch_size=16, grad_accum=1, ckpt_every=0, clip_norm=0.0), tmp_path / "b", quiet=True).fit()
    for (n, p), q in zip(a_task.model.state_dict().items(), b_task.model.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)
    # and it trained: validation improved on the zero-initial baseline
    hist = [r for r in read_jsonl(tmp_path / "a" / "log.jsonl") if r["kind"] == "val"]
    assert hist[-1]["neg_mse"] > hist[0]["neg_mse"]


def test_logs_checkpoints_and_index(tmp_path):
    task, tr = run(tmp_path, cfg())
    recs = read_jsonl(tmp_path / "log.jsonl")
    kinds = {r["kind"] for r in recs}
    assert {"event", "train", "val"} <= kinds
    train = [r for r in recs if r["kind"] == "train"]
    want = {"step", "epoch", "loss", "lr", "samples_per_s", "rss_mb", "cuda_mem_mb", "calls", "abs_err"}
    assert want <= set(train[0])
    vals = [r for r in recs if r["kind"] == "val"]
    assert [v["epoch"] for v in vals] == [0, 1, 2, 3]
    ck = tmp_path / "checkpoints"
    index = json.loads((ck / "index.json").read_text())["files"]
    steps = sorted(int(n[5:-3]) for n in index if n.startswith("step-"))
    assert steps == [33, 36]  # 12 steps/epoch, every 3rd, keep_last=2
    assert {"last.pt", "best.pt", "epoch-3-preval.pt"} <= set(index)
    assert not list(ck.glob("*.tmp")) and sorted(p.name for p in ck.glob("step-*.pt")) == ["step-33.pt", "step-36.pt"]
    state = torch.load(ck / "last.pt", weights_only=True)
    assert state["step"] == 36 and state["epoch"] == 3 and state["trainer"]["finished"]
    assert state["config"]["batch_size"] == 8 and "python" in state["rng"] and state["extra"]["calls"] == 36
    assert (tmp_path / "config.yaml").exists()


def test_crash_and_resume_is_bit_identical(tmp_path):
    ref, _ = run(tmp_path / "ref", cfg())
    with pytest.raises(RuntimeError, match="injected"):
        run(tmp_path / "crash", cfg(), fail_at_step=20)
    seed_everything(123)  # resume must not depend on the process's RNG at start
    task = RegressionTask()
    tr = Trainer.resume(tmp_path / "crash", task, cfg(), quiet=True)
    assert tr.step == 18  # the newest checkpoint before step 20 (ckpt_every=3)
    tr.fit()
    for (n, p), q in zip(ref.model.state_dict().items(), task.model.state_dict().values(), strict=True):
        assert torch.equal(p, q), n


def test_best_checkpoint_keeps_the_anchor_and_patience_stops(tmp_path):
    # lr far too large: training diverges, so the untrained model (epoch 0) must stay the best
    task, tr = run(tmp_path, cfg(lr=50.0, lr_min=1.0, warmup_steps=0, patience=1, epochs=5))
    assert tr.best_epoch == 0
    vals = [r for r in read_jsonl(tmp_path / "log.jsonl") if r["kind"] == "val"]
    assert len(vals) == 2  # epoch 0, epoch 1, then early stop
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == 0 and best["trainer"]["best"] == vals[0]["neg_mse"]


def test_swa_averages_last_epoch_checkpoints(tmp_path):
    task, tr = run(tmp_path, cfg(swa_last=2, ckpt_every=0))
    ck = tmp_path / "checkpoints"
    swa = torch.load(ck / "swa.pt", weights_only=True)
    a = torch.load(ck / "epoch-2-preval.pt", weights_only=True)["model"]
    b = torch.load(ck / "epoch-3-preval.pt", weights_only=True)["model"]
    for n in a:
        torch.testing.assert_close(swa["model"][n], (a[n] + b[n]) / 2)
    assert swa["swa_of"] == ["epoch-2-preval.pt", "epoch-3-preval.pt"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    ck = CheckpointDir(tmp_path, keep_last=2)
    ck.save("last.pt", {"step": 1, "w": torch.ones(1000)})
    real = ckmod.atomic_open

    class Killed(BaseException):
        pass

    def dying_open(path, mode="wb"):
        ctx = real(path, mode)

        class Half:
            def __enter__(self):
                self.f = ctx.__enter__()
                return self

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                raise Killed()

            def __exit__(self, *exc):
                return ctx.__exit__(*exc)

        return Half()

    monkeypatch.setattr(ckmod, "atomic_open", dying_open)
    with pytest.raises(Killed):
        ck.save("last.pt", {"step": 2, "w": torch.zeros(1000)})
    monkeypatch.setattr(ckmod, "atomic_open", real)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".last*"))
    fresh = CheckpointDir(tmp_path)
    assert fresh.verify("last.pt")
    assert fresh.load("last.pt")["step"] == 1


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_checkpoint_falls_back_with_warning(tmp_path, caplog, damage):
    ck = CheckpointDir(tmp_path, keep_last=5)
    for s in (1, 2, 3):
        ck.save(f"step-{s}.pt", {"step": s, "w": torch.full((100,), float(s))})
    p = tmp_path / "step-3.pt"
    data = bytearray(p.read_bytes())
    if damage == "truncate":
        p.write_bytes(bytes(data[: len(data) // 3]))
    else:
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="vecrag.train.checkpoint"):
        name, state = CheckpointDir(tmp_path).load_latest()
    assert name == "step-2.pt" and state["step"] == 2
    assert any("step-3.pt" in r.message and "sha256" in r.message for r in caplog.records)
    with pytest.raises(VecragError, match="checksum"):
        CheckpointDir(tmp_path).load("step-3.pt")
    if damage == "truncate":
        with pytest.raises(VecragError, match="cannot load"):
            load_file(p)


# ---- configs --------------------------------------------------------------------------------------------
@dataclass
class ModelSection:
    kind: str = field(default="gru", metadata={"choices": ("gru", "lstm")})
    hidden: int = 64
    dims: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class RunConfig:
    bank: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelSection = field(default_factory=ModelSection)


def test_config_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  lr: 1.0e-2\n  epochs: 4\nmodel:\n  hidden: 32\n")
    c = load_config(RunConfig, y, ["train.lr=1e-3", "model.kind=lstm", "train.tensorboard=false",
                                   "train.batch_size=16.0", "model.dims=[4, 5]", "bank=/x"])
    assert c.train.lr == 1e-3 and isinstance(c.train.lr, float)
    assert c.train.epochs == 4 and c.model.hidden == 32 and c.model.kind == "lstm" and c.model.dims == [4, 5]
    assert c.train.tensorboard is False and c.train.batch_size == 16 and c.bank == "/x"
    save_config(c, tmp_path / "resolved.yaml")
    again = load_config(RunConfig, tmp_path / "resolved.yaml")
    assert to_dict(again) == to_dict(c)
    assert apply_overrides(c, ["train.seed=3"]).train.seed == 3 and c.train.seed == 0
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_config_words_yaml_reads_as_booleans_stay_words(tmp_path):
    """YAML 1.1 reads ``off`` (and on/yes/no) as a boolean: a string field with such choices gets its word back,
    from an override (``train.amp=off``, ``mining.cuda_graph=off`` failed before) and from a YAML file."""
    from vecrag.train.retriever_task import RetrieverConfig

    assert load_config(RunConfig, None, ["train.amp=off"]).train.amp == "off"
    assert load_config(RetrieverConfig, None, ["mining.cuda_graph=off"]).mining.cuda_graph == "off"
    assert load_config(RetrieverConfig, None, ["mining.cuda_graph=on"]).mining.cuda_graph == "on"
    y = tmp_path / "c.yaml"
    y.write_text("mining:\n  cuda_graph: off\ntrain:\n  amp: off\n")
    c = load_config(RetrieverConfig, y)
    assert c.mining.cuda_graph == "off" and c.train.amp == "off"
    assert load_config(RunConfig, None, ["bank=yes"]).bank == "true"  # no choices: the canonical word
    with pytest.raises(VecragError, match="not one of auto, bf16, off"):
        load_config(RunConfig, None, ["train.amp=yes"])


@pytest.mark.parametrize("override, match", [
    (["train.lrr=1"], "unknown config key.*train.lrr"),
    (["nope=1"], "unknown config key"),
    (["train.lr=fast"], "train.lr expects float"),
    (["train.batch_size=2.5"], "train.batch_size expects int"),
    (["model.kind=rnn"], "not one of gru, lstm"),
    (["train.lr=0"], "train|lr"),
    (["train.batch_size=0"], "batch_size"),
    (["train.early_stop_mode=up"], "not one of max, min"),
    (["train=3"], "is a section"),
    (["train.lr"], "not key=value"),
])
def test_config_errors(override, match):
    with pytest.raises(VecragError, match=match) as e:
        load_config(RunConfig, None, override)
    if "unknown" in match:  # lists the valid keys (of the section at fault)
        assert "train.batch_size" in str(e.value)
        assert ("model.hidden" in str(e.value)) == (override == ["nope=1"])


def test_config_missing_file_names_presets(tmp_path):
    with pytest.raises(VecragError, match="config file not found"):
        load_config(RunConfig, tmp_path / "missing.yaml")
