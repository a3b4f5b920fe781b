"""LVM architectures, loss, training task and evaluation (tiny models, 32-D synthetic banks)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_synthetic_bank, steps_without_gpu_sync
from vecrag.bank.sequences import make_samples
from vecrag.bank.store import EncoderInfo, write_bank
from vecrag.config import load_config
from vecrag.errors import VecragError
from vecrag.eval.lvm_eval import default_predictors, evaluate, fit_ridge, ridge_solve
from vecrag.fsutil import read_jsonl
from vecrag.models.lvm import LVM, LVM_KINDS, LVMModelConfig
from vecrag.runs.load import load_lvm
from vecrag.scoring.evaluators import NextVectorEvaluator, vector_groups
from vecrag.scoring.heuristics import heuristic_query_torch
from vecrag.scoring.predictors import HeuristicPredictor
from vecrag.train.loop import Trainer, seed_everything
from vecrag.train.lvm_task import LVMConfig, LVMLossConfig, LVMTask, lvm_loss


def contexts(n: int, L: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ctx = F.normalize(torch.randn(n, L, dim, generator=g), dim=-1)
    lengths = torch.randint(1, L + 1, (n,), generator=g)
    mask = torch.arange(L)[None, :] >= (L - lengths)[:, None]
    return ctx * mask[:, :, None], mask


@pytest.mark.parametrize("kind", LVM_KINDS)
@pytest.mark.parametrize("dim", [32, 48])
def test_architectures_unit_norm_anchor_at_step0_and_masking(kind, dim):
    torch.manual_seed(0)
    ctx, mask = contexts(9, 6, dim)
    for anchor in ("last", "mean", "ewma"):
        cfg = LVMModelConfig(kind=kind, hidden=16, layers=2, heads=2, anchor=anchor, alpha=0.3)
        m = LVM(dim, cfg, context=6).eval()
        out = m(ctx, mask)
        assert out.shape == (9, dim)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(9))
        torch.testing.assert_close(out, heuristic_query_torch(ctx, mask, anchor, 0.3), atol=1e-6, rtol=0)
    # a trained (non-zero) head: still unit norm, and padded slots do not leak into the output
    torch.nn.init.normal_(m.head.weight, std=0.5)
    junk = ctx + 5.0 * (~mask)[:, :, None] * torch.randn_like(ctx)
    out, out_junk = m(ctx, mask), m(junk, mask)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(9))
    torch.testing.assert_close(out, out_junk, atol=1e-5, rtol=0)
    assert not torch.allclose(out, heuristic_query_torch(ctx, mask, "ewma", 0.3), atol=1e-3)
    # each sample alone, cropped to its own length (no padding at all), gives the batch's output
    for i, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(m(ctx[i:i + 1, 6 - n:], mask[i:i + 1, 6 - n:])[0], out[i], atol=1e-5, rtol=0)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_model_config_errors():
    with pytest.raises(VecragError, match="model.kind"):
        load_config(LVMConfig, None, ["model.kind=rnn"])
    with pytest.raises(VecragError, match="divisible"):
        load_config(LVMConfig, None, ["model.kind=transformer", "model.hidden=30", "model.heads=4"])
    with pytest.raises(VecragError, match="loss weights"):
        load_config(LVMConfig, None, ["loss.w_cos=0"])
    with pytest.raises(VecragError, match="expects"):
        LVM(32, LVMModelConfig(hidden=8), 4)(torch.zeros(2, 4, 16), torch.ones(2, 4, dtype=torch.bool))


def test_loss_values_on_hand_built_vectors():
    e = torch.eye(4)
    pred = torch.stack([e[0], e[1], F.normalize(e[0] + e[1], dim=0)])
    tgt = torch.stack([e[0], e[2], e[0]])
    cfg = LVMLossConfig(w_cos=1.0, w_mse=0.0, w_nce=0.0)
    loss, st = lvm_loss(pred, tgt, cfg)
    want_cos = ((1 - 1) + (1 - 0) + (1 - 1 / math.sqrt(2))) / 3
    assert float(loss) == pytest.approx(want_cos)
    loss, st = lvm_loss(pred, tgt, LVMLossConfig(w_cos=0.0, w_mse=1.0))
    assert float(loss) == pytest.approx(2 * want_cos / 4)  # unit vectors: mean((p-t)^2) = 2 (1 - cos) / D
    # InfoNCE, tau 0.5: row i has logits p_i . t_j / tau, label i
    loss, st = lvm_loss(pred, tgt, LVMLossConfig(w_cos=0.0, w_nce=1.0, tau=0.5))
    logits = pred @ tgt.T / 0.5
    want = float(np.mean([-(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(3)]))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    # targets 0 and 2 are the same vector: with groups, each is masked out of the other's negatives
    groups = torch.tensor([0, 1, 0])
    loss, st = lvm_loss(pred, tgt, LVMLossConfig(w_cos=0.0, w_nce=1.0, tau=0.5), groups)
    rows = [[0, 1], [0, 1, 2], [1, 2]]
    want = float(np.mean([-(logits[i, i] - torch.logsumexp(logits[i, rows[i]], 0)) for i in range(3)]))
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert st["nce_acc"] == pytest.approx(2 / 3)  # row 1 scores 0 against every target: argmax picks 0
    combo, _ = lvm_loss(pred, tgt, LVMLossConfig(w_cos=1.0, w_mse=2.0, w_nce=0.5, tau=0.5), groups)
    assert float(combo) == pytest.approx(want_cos + 2 * 2 * want_cos / 4 + 0.5 * want, rel=1e-5)


def test_vector_groups_marks_exact_duplicates_only():
    v = np.eye(3, dtype=np.float32)[[0, 1, 0, 2, 1]]
    v[4, 0] = 1e-7  # almost row 1, but not byte-identical
    g = vector_groups(v)
    assert g[0] == g[2] and len({g[0], g[1], g[3], g[4]}) == 4


def tiny_cfg(bank_path: Path, **over: object) -> LVMConfig:
    ov = [f"{k}={v}" for k, v in over.items()]
    cfg = load_config(LVMConfig, "lvm-tiny", ov)
    cfg.bank = str(bank_path)
    return cfg


def test_training_never_ends_below_its_anchor(tmp_path):
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=80, per_article=12)
    cfg = tiny_cfg(bank.path, **{"train.epochs": 3, "train.lr": 3e-3, "loss.w_nce": 0.1})
    seed_everything(cfg.train.seed)
    task = LVMTask(bank, cfg)
    assert task.n_train == len(make_samples(bank, "train", min_context=1))  # every position, short contexts too
    tr = Trainer(task, cfg.train, tmp_path / "run", run_config=cfg, quiet=True)
    res = tr.fit()
    vals = [r for r in read_jsonl(tmp_path / "run" / "log.jsonl") if r["kind"] == "val"]
    anchor = vals[0]["baseline_anchor_ewma_cos"]
    assert vals[0]["cos"] == pytest.approx(anchor, abs=1e-6)  # step 0 = the anchor
    assert res["best"] >= anchor - 1e-6  # float noise: the model and the heuristic take different kernels
    assert {"R@1", "R@10", "MRR@10", "baseline_last_cos", "baseline_mean_R@10"} <= set(vals[0])
    model, _ = load_lvm(tmp_path / "run", "best")
    # `vecrag eval lvm`'s evaluator is the validation's: the same object gives the same number
    ev = NextVectorEvaluator(bank, task.val, cfg.train.context)
    assert ev.primary == "cos" and ev(model)["cos"] == pytest.approx(res["best"], abs=1e-5)
    # the validation's search and hit rules are `eval baselines`': same recall for the same heuristic queries
    from vecrag.eval.baselines import run_baselines

    base = run_baselines(bank, task.val, cfg.train.context, (1, 10), text_baselines=False, progress=False)
    for name in ("last", "mean"):
        for k in (1, 10):
            assert vals[0][f"baseline_{name}_R@{k}"] == pytest.approx(base[name][f"R@{k}"], abs=1e-9), (name, k)
    assert 0 < base["last"]["R@1"] < base["last"]["R@10"] < 1  # not a degenerate bank


def test_eval_table_has_every_baseline_and_step0_equals_anchor(tmp_path):
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=60, per_article=[3, 8, 14] * 20)
    cfg = tiny_cfg(bank.path, **{"train.context": 10})
    model = LVM(bank.dim, cfg.model, 10).eval()
    samples = make_samples(bank, "test")
    ridge = fit_ridge(bank, 10, lam=1.0)
    res = evaluate(bank, samples, 10, default_predictors(model, cfg, ridge), horizon=3)
    rows = res["rows"]
    assert set(rows) == {"lvm-gru", "copy-last", "mean", "ewma-0.5", "ridge"}
    for r in rows.values():
        assert {"cos", "cos_ci", "cos_median", "R@1", "R@5", "R@10", "R@100", "R@500", "R@10_ci", "MRR@10",
                "contrast_acc", "copy", "buckets", "n_queries"} <= set(r)
        assert r["cos_ci"][0] <= r["cos"] <= r["cos_ci"][1] and 0 <= r["R@1"] <= r["R@10"] <= r["R@500"] <= 1
    assert rows["lvm-gru"]["cos"] == pytest.approx(rows["ewma-0.5"]["cos"], abs=1e-6)
    assert rows["copy-last"]["copy"] == pytest.approx(1.0)  # copy-last echoes its context exactly
    assert set(rows["mean"]["buckets"]) == {"1", "2-4", "5-9", "10+"}
    assert sum(b["n"] for b in rows["mean"]["buckets"].values()) == len(samples)
    assert len(res["rollout"]["ridge"]["cos"]) == 3


def rotation_bank(path: Path, dim: int = 16, n_articles: int = 40, per_article: int = 10):
    """v_{t+1} = R v_t for a fixed orthogonal R: the next vector is an exact linear function of the last."""
    g = np.random.default_rng(1)
    R, _ = np.linalg.qr(g.standard_normal((dim, dim)))
    vecs, arts, pos = [], [], []
    for a in range(n_articles):
        v = g.standard_normal(dim)
        v /= np.linalg.norm(v)
        for p in range(per_article):
            vecs.append(v)
            arts.append(a)
            pos.append(p)
            v = R @ v
    texts = [f"a{a} c{p}" for a, p in zip(arts, pos, strict=True)]
    return write_bank(path, np.asarray(vecs, np.float32), article_ids=np.asarray(arts), positions=np.asarray(pos),
                      texts=texts, titles={a: str(a) for a in range(n_articles)},
                      encoder=EncoderInfo("rotation", dim), dtype="float32")


def test_ridge_baseline_is_exact_on_a_linear_problem(tmp_path):
    # the closed form itself
    g = np.random.default_rng(0)
    x = np.concatenate([g.standard_normal((200, 5)), np.ones((200, 1))], 1)
    w = g.standard_normal((6, 3))
    np.testing.assert_allclose(ridge_solve(x.T @ x, x.T @ (x @ w), 1e-9), w, atol=1e-6)
    # on a bank whose next vector is R @ last, ridge predicts it; copy-last does not
    bank = rotation_bank(tmp_path / "rot")
    samples = make_samples(bank, "test")
    ev = NextVectorEvaluator(bank, samples, 4)
    ridge = fit_ridge(bank, 4, lam=1e-6)
    r, last = ev.score(ridge), ev.score(HeuristicPredictor("last", context_len=4))
    assert r["cos"] > 0.999 and r["R@1"] == 1.0
    assert last["cos"] < 0.5
    roll = ev.rollout(ridge, 4)
    assert roll["n"] > 0 and min(roll["cos"]) > 0.99  # exact predictions stay exact when fed back


def test_ridge_penalty_is_chosen_on_the_val_split(tmp_path):
    """A grid of penalties: the exact linear problem is best fitted by the smallest one, and val picks it."""
    bank = rotation_bank(tmp_path / "rot")
    assert len(make_samples(bank, "val")) > 0
    ridge = fit_ridge(bank, 4, lam=(1e-6, 1e3))
    assert ridge.lam == 1e-6
    assert NextVectorEvaluator(bank, make_samples(bank, "test"), 4).score(ridge)["cos"] > 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
def test_lvm_training_steps_never_wait_for_the_gpu(tmp_path):
    """LVM steps (ewma anchor, cosine + MSE + InfoNCE, bf16) make no host-GPU sync between log steps: the sample
    id tables live on the device and a step copies only its indices, pinned and non-blocking."""
    bank = make_synthetic_bank(tmp_path / "bank", n_articles=60, per_article=12)
    cfg = tiny_cfg(bank.path, **{"train.device": "cuda", "train.log_every": 1000, "train.ckpt_every": 1000,
                                 "loss.w_nce": 0.1})  # log and checkpoint steps sync by design
    task = LVMTask(bank, cfg)
    tr = Trainer(task, cfg.train, tmp_path / "run", run_config=cfg, quiet=True)
    steps_without_gpu_sync(tr)
    assert tr.step == 6
