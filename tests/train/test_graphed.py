"""The training step as CUDA graphs (vecrag.train.graphed): where it applies, that graphed training follows the
eager trajectory, one capture per shape and curriculum phase, sync mining inside the graph, and the eager
fallback when a step cannot be captured. The CUDA tests run on a GPU machine; the CPU ones everywhere."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tests.conftest import make_synthetic_bank
from vecrag.config import load_config
from vecrag.fsutil import read_jsonl
from vecrag.train.graphed import graph_support
from vecrag.train.loop import Trainer
from vecrag.train.lvm_task import LVMConfig, LVMTask
from vecrag.train.mining.curriculum import RULES, FilterConfig, Phase, pack_selection, stats_from_counts
from vecrag.train.retriever_task import RetrieverConfig, RetrieverTask, resolve_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return make_synthetic_bank(tmp_path_factory.mktemp("graphed") / "bank", n_articles=60, per_article=12)


def records(run, kind):
    return [r for r in read_jsonl(run / "log.jsonl") if r["kind"] == kind]


def lvm_run(bank, run, graph: str, **over):
    ov = {"train.device": "cuda", "train.cuda_graph": graph, "train.epochs": 2, "train.log_every": 2,
          "loss.w_nce": 0.1, "model.dropout": 0.0, **over}
    cfg = load_config(LVMConfig, "lvm-tiny", [f"{k}={v}" for k, v in ov.items()])
    cfg.bank = str(bank.path)
    task = LVMTask(bank, cfg)
    tr = Trainer(task, cfg.train, run, run_config=cfg, quiet=True)
    tr.fit()
    return tr


def retriever_run(bank, run, graph: str, *extra: str):
    cfg = load_config(RetrieverConfig, "retriever-tiny",
                      ["train.device=cuda", f"train.cuda_graph={graph}", "train.log_every=2", "model.anchor=ewma",
                       "mining.schedule=0-0:none;1-1:4@-1.0-1.0;2-2:8@-1.0-1.0", *extra])
    resolve_config(cfg, bank)
    task = RetrieverTask(bank, cfg)
    try:
        tr = Trainer(task, cfg.train, run, run_config=cfg, quiet=True)
        tr.fit()
    finally:
        task.close()
    return tr, task


def test_graphs_apply_only_where_they_can():
    assert "CUDA" in graph_support(torch.device("cpu"), 1, 1)
    assert "torchrun" in graph_support(torch.device("cuda"), 2, 1)
    assert "grad_accum" in graph_support(torch.device("cuda"), 1, 4)
    assert graph_support(torch.device("cuda"), 1, 1) == ""


def test_cuda_graph_on_a_cpu_says_why_and_trains_eager(bank, tmp_path, caplog):
    cfg = load_config(RetrieverConfig, "retriever-tiny", ["train.cuda_graph=on", "train.epochs=1"])
    resolve_config(cfg, bank)
    task = RetrieverTask(bank, cfg)
    with caplog.at_level(logging.WARNING):
        tr = Trainer(task, cfg.train, tmp_path / "r", run_config=cfg, quiet=True)
    assert tr.graphs is None and "runs eager" in caplog.text and "CUDA" in caplog.text
    tr.fit()
    task.close()
    start = [r for r in records(tmp_path / "r", "event") if r["event"] == "start"][0]
    assert start["cuda_graph"] is False and "CUDA" in start["eager_because"]
    assert records(tmp_path / "r", "train")[-1]["loss"] > 0


def test_summed_selection_counts_give_the_sum_of_the_batches_statistics():
    """The graphed step adds the miner's counts of every batch on the device and reads them once an epoch:
    the statistics of the sum are those of the merged batches."""
    rng = np.random.default_rng(0)
    merged, tails, n = None, [], 0
    for _ in range(3):
        B, K = 5, 9
        cq = np.sort(rng.uniform(-1, 1, (B, K)), axis=1)[:, ::-1].copy()
        packed = pack_selection(rng.integers(0, 100, (B, K)), cq, rng.uniform(-1, 1, (B, K)), rng.uniform(0, 1, B),
                                rng.random((B, K)) < 0.2, Phase(0, 0, 3, -0.5, 0.9), FilterConfig()).numpy()
        tails.append(packed[B * 3:])
        one = stats_from_counts(packed[B * 3:], B, B * K)
        if merged is None:
            merged = one
        else:
            merged.merge(one)
        n += B
    total = stats_from_counts(np.sum(tails, axis=0), n, n * 9)
    assert total.removed == merged.removed and set(total.removed) == set(RULES)
    assert total.n_short == merged.n_short and total.neg_n == merged.neg_n
    assert total.summary()["neg_mean"] == pytest.approx(merged.summary()["neg_mean"])


@cuda
def test_graphed_lvm_follows_the_eager_trajectory(bank, tmp_path):
    eager = lvm_run(bank, tmp_path / "eager", "off")
    graphed = lvm_run(bank, tmp_path / "graph", "on")
    assert eager.graphs is None and graphed.graphs is not None and graphed.graphs.failed is None
    # one graph per batch shape: the full batches and the epoch's last, partial one
    full, rest = divmod(graphed.task.n_train, graphed.cfg.batch_size)
    assert len(graphed.graphs.graphs) == 1 + (rest > 0)
    le = [r["loss"] for r in records(tmp_path / "eager", "train")]
    lg = [r["loss"] for r in records(tmp_path / "graph", "train")]
    assert len(le) == len(lg) > 3
    np.testing.assert_allclose(lg, le, rtol=2e-2)
    ve, vg = records(tmp_path / "eager", "val")[-1], records(tmp_path / "graph", "val")[-1]
    assert vg["cos"] == pytest.approx(ve["cos"], abs=5e-3)
    assert vg["cos"] > ve["baseline_anchor_ewma_cos"] - 0.05  # it trained


@cuda
def test_graphed_lvm_with_dropout_trains(bank, tmp_path):
    tr = lvm_run(bank, tmp_path / "drop", "on", **{"model.dropout": 0.1})
    assert tr.graphs.failed is None and tr.graphs.captures >= 1
    losses = [r["loss"] for r in records(tmp_path / "drop", "train")]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


@cuda
def test_graphed_retriever_mines_inside_the_step_and_follows_eager(bank, tmp_path):
    te, _ = retriever_run(bank, tmp_path / "eager", "off")
    tg, task = retriever_run(bank, tmp_path / "graph", "on")
    assert tg.graphs.failed is None
    keys = {k[0] for k in tg.graphs.graphs}
    # epoch 0 in-batch + queue only, epoch 1 four mined negatives, epoch 2 eight: one key each (x batch shapes)
    assert {k[1:] for k in keys} == {(), ("mine", 4, -1.0, 1.0), ("mine", 8, -1.0, 1.0)}
    assert task.counters["mined_sync_graph"] > 0
    le = [r["loss"] for r in records(tmp_path / "eager", "train")]
    lg = [r["loss"] for r in records(tmp_path / "graph", "train")]
    assert len(le) == len(lg)
    np.testing.assert_allclose(lg, le, rtol=3e-2)
    me = records(tmp_path / "eager", "mining")
    mg = records(tmp_path / "graph", "mining")
    assert [m["samples"] for m in mg] == [m["samples"] for m in me] and mg[-1]["samples"] > 0
    assert mg[-1]["neg_mean"] == pytest.approx(me[-1]["neg_mean"], abs=2e-2)
    assert records(tmp_path / "graph", "val")[-1]["R@10"] == pytest.approx(
        records(tmp_path / "eager", "val")[-1]["R@10"], abs=0.05)


@cuda
def test_a_step_that_cannot_be_captured_runs_eager_and_says_so(bank, tmp_path, caplog):
    cfg = load_config(LVMConfig, "lvm-tiny", ["train.device=cuda", "train.cuda_graph=on", "train.epochs=1"])
    cfg.bank = str(bank.path)
    task = LVMTask(bank, cfg)
    compute = task.compute

    def syncing(t, key):
        loss, stats = compute(t, key)
        stats["host"] = torch.tensor(float(loss.item()), device=loss.device)  # a host sync: cannot be captured
        return loss, stats

    task.compute = syncing
    with caplog.at_level(logging.WARNING):
        tr = Trainer(task, cfg.train, tmp_path / "r", run_config=cfg, quiet=True)
        tr.fit()
    assert tr.graphs.failed and "without CUDA graphs" in caplog.text
    ev = [r for r in records(tmp_path / "r", "event") if r["event"] == "cuda_graph"]
    assert len(ev) == 1 and ev[0]["ok"] is False
    assert tr.step == tr.total_steps and np.isfinite(records(tmp_path / "r", "train")[-1]["loss"])
    x = torch.randn(4, device="cuda")  # the device's random generator is usable again
    assert torch.isfinite(torch.nn.functional.dropout(x, 0.5)).all()


def test_an_async_miss_staged_as_padding_gives_the_loss_of_no_mined_set(bank):
    """A graphed step stages an async batch that missed as all -1 negatives (one graph per phase, not two): the
    padding is masked, so the loss and the stats are those of the step without mined negatives."""
    cfg = load_config(RetrieverConfig, "retriever-tiny", ["mining.mode=none"])
    resolve_config(cfg, bank)
    task = RetrieverTask(bank, cfg)
    st = task.stage(np.arange(16), 0)
    t = {k: torch.from_numpy(v) for k, v in st.arrays.items()}
    torch.manual_seed(0)
    loss, stats = task.compute(t, st.key)
    torch.manual_seed(0)
    padded, pstats = task.compute({**t, "mined": torch.full((16, 4), -1, dtype=torch.int64)}, st.key)
    assert float(loss.detach()) > 0
    torch.testing.assert_close(padded, loss)
    assert float(pstats["n_neg"]) == float(stats["n_neg"]) and float(pstats["acc"]) == float(stats["acc"])
    task.close()


def test_a_checkpoint_keeps_the_optimizer_flags_of_the_run_that_loads_it(bank, tmp_path):
    """optimizer.load_state_dict copies the saved run's capturable / fused / foreach: a GPU run's checkpoint resumed
    on a CPU (or a CPU run's on a GPU, which would turn its graphs off) must get the loading run's own flags."""
    cfg = load_config(LVMConfig, "lvm-tiny", ["train.epochs=1", "train.max_steps=2"])
    cfg.bank = str(bank.path)
    tr = Trainer(LVMTask(bank, cfg), cfg.train, tmp_path / "a", run_config=cfg, quiet=True)
    tr.fit()
    state = tr.state_dict()
    for g in state["optimizer"]["param_groups"]:
        g.update(capturable=True, fused=True, foreach=False)  # as a graphed GPU run writes them
    other = Trainer(LVMTask(bank, cfg), cfg.train, tmp_path / "b", run_config=cfg, quiet=True)
    other.load_state_dict(state)
    assert all(g["capturable"] is False and g["fused"] is None and g["foreach"] is None
               for g in other.optimizer.param_groups)
    assert other.step == 2
