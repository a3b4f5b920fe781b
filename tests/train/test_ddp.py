"""DDP on CPU with gloo and 2 processes (docs/distributed.md).

- the all-gathered in-batch layout: masks, loss and gradients of a 2-rank gathered computation (uneven
  shards 5 + 3, duplicates / same text / same-article neighbours ACROSS ranks) equal the single-process
  ones over the concatenated batch (retriever InfoNCE and the LVM's InfoNCE term);
- `torchrun --nproc_per_node 2 ... train.batch_size=B` matches a plain run with `train.batch_size=2B`
  (same global batch): final weights and the logged loss curve within TOL (measured: about 1e-7), for the
  LVM (cos + InfoNCE) and the retriever (sync mining on, mlp doc tower so gradients cross ranks, grad_accum 2);
- resume under DDP from a mid-run step checkpoint reaches the uninterrupted 2-process run's weights bit for
  bit; a resume with another number of processes is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import make_synthetic_bank
from vecrag.cli import main
from vecrag.fsutil import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5   # max abs difference allowed between the 1-process and the 2-process runs (weights and losses)
LVM_ARGS = ["--config", "lvm-tiny", "train.epochs=2", "train.log_every=1", "train.ckpt_every=5",
            "train.keep_last=5", "train.torch_threads=1", "train.val_max_queries=40", "loss.w_nce=0.1"]
RETR_ARGS = ["--config", "retriever-tiny", "train.epochs=2", "train.log_every=1", "train.torch_threads=1",
             "train.grad_accum=2", "train.val_max_queries=40", "mining.schedule=0-1:4@0.0-0.99",
             "model.doc=mlp", "model.doc_hidden=16"]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def torchrun(*args: str, timeout: float = 120) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "VECRAG_DIST_TIMEOUT_S": "60"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "vecrag.cli", *args, "--quiet"]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout


def weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["trainer"]["finished"]
    return state["model"]


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def train_records(run: Path) -> list[dict]:
    return [r for r in read_jsonl(run / "log.jsonl") if r["kind"] == "train"]


def compare_runs(one: Path, two: Path) -> tuple[float, float]:
    ra, rb = train_records(one), train_records(two)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] and len(ra) > 5
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(ra, rb, strict=True))
    w_diff = max_weight_diff(one, two)
    print(f"\n{one.parent.name}: 1 vs 2 processes: max |weight diff| {w_diff:.2e}, max |loss diff| {loss_diff:.2e}")
    assert w_diff < TOL and loss_diff < TOL
    return w_diff, loss_diff


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    return make_synthetic_bank(tmp_path_factory.mktemp("ddp") / "bank", n_articles=20, per_article=8, dim=16)


# ---- the gathered layout, in 2 spawned gloo processes --------------------------------------------------
G_IDS = np.array([3, 10, 11, 40, 7, 10, 12, 41], np.int64)   # rank 0: slots 0-4, rank 1: slots 5-7
SIZES = [5, 3]


def _layout_case(dim: int = 16):
    """Chunk metadata with cross-rank traps: id 10 twice (slots 1 and 5), 11 and 12 neighbours of 10 in one
    article (window 2), 40/41 the same text group, 7's vector identical to 3's."""
    from vecrag.train.losses import ChunkMeta

    n = 64
    article = np.arange(n) // 8
    position = np.arange(n) % 8
    text_group = np.arange(n)
    text_group[41] = 40
    meta = ChunkMeta(article.astype(np.int64), position.astype(np.int64), text_group.astype(np.int64))
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    bank[7] = bank[3]
    q = torch.nn.functional.normalize(torch.randn(len(G_IDS), dim, generator=g), dim=1)
    doc = torch.nn.Linear(dim, dim)
    with torch.no_grad():
        doc.weight.copy_(torch.eye(dim) + 0.1 * torch.randn(dim, dim, generator=g))
        doc.bias.zero_()
    return meta, bank, q, doc


def _losses(q_rows, ids_rows, pos_rows, ids_all, pos_all, bank, groups_t, offset, meta):
    from vecrag.train.losses import InfoNCELoss, NegativeMasker
    from vecrag.train.lvm_task import LVMLossConfig, lvm_loss

    masker = NegativeMasker(meta, window=2, dup_eps=1e-6)
    m, _ = masker.mask(ids_rows, ids_all, pos_rows, pos_all)
    nce, _ = InfoNCELoss(0.05, 0.02)(q_rows, pos_rows, [(pos_all, m)])
    cfg = LVMLossConfig(w_cos=1.0, w_mse=0.5, w_nce=0.3, tau=0.05)
    ti, ta = torch.from_numpy(ids_rows), torch.from_numpy(ids_all)
    lvm, _ = lvm_loss(q_rows, bank[ti], cfg, groups_t[ti], cands=bank[ta], cand_groups=groups_t[ta], offset=offset)
    return m, nce, lvm


def _reference():
    meta, bank, q0, doc = _layout_case()
    groups_t = torch.from_numpy(meta.text_group)
    q = q0.clone().requires_grad_(True)
    pos = torch.nn.functional.normalize(doc(bank[torch.from_numpy(G_IDS)]), dim=1)
    m, nce, lvm = _losses(q, G_IDS, pos, G_IDS, pos, bank, groups_t, 0, meta)
    (nce + lvm).backward()
    return {"mask": m, "nce": float(nce.detach()), "lvm": float(lvm.detach()), "q_grad": q.grad.clone(),
            "doc_grad": doc.weight.grad.clone()}


def _rank_worker(r: int, world: int, rdv: str, out_dir: str) -> None:
    import torch.distributed as dist

    from vecrag.train import distributed as dd

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=r, world_size=world)
    try:
        meta, bank, q0, doc = _layout_case()
        groups_t = torch.from_numpy(meta.text_group)
        lo = sum(SIZES[:r])
        ids = G_IDS[lo:lo + SIZES[r]]
        q = q0[lo:lo + SIZES[r]].clone().requires_grad_(True)
        pos = torch.nn.functional.normalize(doc(bank[torch.from_numpy(ids)]), dim=1)
        all_ids, sizes = dd.gather_ids(ids)
        all_pos = dd.gather_with_grad(pos, sizes)
        m, nce, lvm = _losses(q, ids, pos, all_ids, all_pos, bank, groups_t, dd.offset(sizes), meta)
        # the Trainer's scaling: world x local / global rows, then DDP's mean over ranks
        ((nce + lvm) * (world * len(ids) / len(G_IDS))).backward()
        g = doc.weight.grad.clone()
        dist.all_reduce(g)
        plain = dd.gather_with_grad(bank[torch.from_numpy(ids)])  # no grad: a plain padded all-gather
        torch.save({"mask": m, "nce": float(nce.detach()), "lvm": float(lvm.detach()), "q_grad": q.grad / world,
                    "doc_grad": g / world, "plain": plain,
                    "all_ids": torch.from_numpy(all_ids), "offset": dd.offset(sizes)}, f"{out_dir}/rank{r}.pt")
    finally:
        dist.destroy_process_group()


def test_gathered_layout_equals_single_process_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_rank_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path)), nprocs=2, join=True)
    ref = _reference()
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    rows = [slice(0, 5), slice(5, 8)]
    for r, g in enumerate(got):
        assert g["offset"] == rows[r].start
        assert torch.equal(g["all_ids"], torch.from_numpy(G_IDS))
        assert torch.equal(g["plain"], _layout_case()[1][torch.from_numpy(G_IDS)])
        assert torch.equal(g["mask"], ref["mask"][rows[r]]), f"rank {r}: negatives masked in the wrong slots"
        assert torch.allclose(g["q_grad"], ref["q_grad"][rows[r]], atol=1e-6)
    # the traps are really in the layout: slot 1's duplicate id 10 sits on rank 1 (slot 5), and 3 vs 7 are
    # identical vectors on one rank; both must be masked for slot 1 / slot 0
    assert bool(ref["mask"][1, 5]) and bool(ref["mask"][1, 6]) and bool(ref["mask"][0, 4]) and bool(ref["mask"][3, 7])
    # per-sample means weighted by rows = the global mean; gradients (through the doc tower, across ranks) match
    for key in ("nce", "lvm"):
        total = sum(g[key] * n for g, n in zip(got, SIZES, strict=True)) / sum(SIZES)
        assert abs(total - ref[key]) < 1e-5, key
    for g in got:
        assert torch.allclose(g["doc_grad"], ref["doc_grad"], atol=1e-6)


@pytest.mark.parametrize("n", [16, 13, 3])
def test_shards_are_disjoint_contiguous_and_cover_the_batch(n):
    from vecrag.train.distributed import shard, shard_sizes

    batch = np.arange(100, 100 + n)
    assert np.array_equal(shard(batch, 0, 1), batch)
    parts = [shard(batch, r, 2) for r in range(2)]
    assert np.array_equal(np.concatenate(parts), batch)  # rank order = the single-process batch order
    assert [len(p) for p in parts] == shard_sizes(n, 2) and abs(len(parts[0]) - len(parts[1])) <= 1
    if n == 16:
        assert np.array_equal(parts[1], batch[8:16])  # full batches: rank r holds rows r*bs .. (r+1)*bs


# ---- end to end: torchrun x 2 vs one process -------------------------------------------------------------
@pytest.fixture(scope="module")
def lvm_runs(bank, tmp_path_factory):
    base = tmp_path_factory.mktemp("lvm")
    two = base / "two"
    torchrun("train", "lvm", str(bank.path), *LVM_ARGS, "train.batch_size=8", "--out", str(two))
    one = base / "one"
    assert main(["train", "lvm", str(bank.path), *LVM_ARGS, "train.batch_size=16", "--out", str(one), "--quiet"]) == 0
    return one, two


def test_lvm_two_processes_match_one(lvm_runs):
    one, two = lvm_runs
    compare_runs(one, two)
    events = [r for r in read_jsonl(two / "log.jsonl") if r["kind"] == "event" and r["event"] == "start"]
    assert len(events) == 1 and events[0]["world_size"] == 2 and events[0]["global_batch"] == 16  # rank 0 only
    steps = [r["step"] for r in train_records(two)]
    assert steps == sorted(set(steps))
    assert torch.load(two / "checkpoints" / "last.pt", weights_only=True)["world_size"] == 2
    assert "world_size" not in torch.load(one / "checkpoints" / "last.pt", weights_only=True)


def test_retriever_two_processes_match_one(bank, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    torchrun("train", "retriever", str(bank.path), *RETR_ARGS, "train.batch_size=8", "--out", str(two))
    assert main(["train", "retriever", str(bank.path), *RETR_ARGS, "train.batch_size=16", "--out", str(one),
                 "--quiet"]) == 0
    compare_runs(one, two)
    for run in (one, two):
        assert train_records(run)[-1]["mining_mined_sync"] > 0  # hard negatives were mined and used
    qa = torch.load(one / "checkpoints" / "last.pt", weights_only=True)["extra"]["queue"]
    qb = torch.load(two / "checkpoints" / "last.pt", weights_only=True)["extra"]["queue"]
    assert qa == qb  # the memory bank is fed the gathered (global) positives


def test_resume_under_ddp_is_bit_identical(lvm_runs, bank, tmp_path):
    _, two = lvm_runs
    run = tmp_path / "resumed"
    shutil.copytree(two, run)
    # the state a kill right after step-5.pt leaves behind: drop every newer checkpoint
    idx_path = run / "checkpoints" / "index.json"
    index = json.loads(idx_path.read_text())["files"]
    cut = index["step-5.pt"]["seq"]
    for name in [n for n, e in index.items() if e["seq"] > cut]:
        (run / "checkpoints" / name).unlink()
        del index[name]
    idx_path.write_text(json.dumps({"files": index}))
    torchrun("train", "lvm", "--resume", str(run))
    resumed = [r for r in read_jsonl(run / "log.jsonl") if r.get("event") == "resume"]
    assert len(resumed) == 1 and resumed[0]["checkpoint"] == "step-5.pt" and resumed[0]["step"] == 5
    a, b = weights(two), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed 2-process run differs from the uninterrupted one"
    # one process cannot continue a 2-process run (its sampler positions count 2 x batch_size samples)
    assert main(["train", "lvm", "--resume", str(run), "--quiet"]) == 2
