"""Training samples/s with the step as a CUDA graph against the same model in a bare loop (not a test).

Retriever: the retriever-gpu tower (causal transformer, 2 layers, 4 heads, hidden 512, ewma anchor 0.5, bf16,
context 10) on a bank of random unit vectors, trained by vecrag's Trainer (``benchmarks/train_retriever.py``'s
``measure``) with the step eager or graphed (``train.cuda_graph``), without mining, with sync mining (inside the
graphed step) and with the async miner process, at batch 256 and 1024. The yardstick for these rows is
``step_limit.py`` (the same tower in a bare loop and in one CUDA graph), run beside this in the same call.

LVM: the lvm-gpu preset's shape (transformer 4 x 512, 8 heads, dropout 0.1, context 10, cosine + 0.1 InfoNCE,
batch 256, bf16) by the Trainer, eager and graphed, and its own bare step (gather from the device bank, forward,
loss, backward, clip, AdamW) eager and captured once in a CUDA graph: the trainer's graphed rate over the bare
graphed rate is the share of the GPU's speed the trainer keeps.

    python benchmarks/graph_step.py --device cuda --size 1000000 --steps 400
    python benchmarks/graph_step.py --device cpu --size 20000 --steps 20 --what lvm,retriever   # smoke
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_retriever import measure, median_rate, random_bank, train_records  # noqa: E402

RET_EXTRA = ["model.anchor=ewma", "model.alpha=0.5", "loss.tau=0.03", "train.amp=auto"]


def retriever_rows(bank, work: Path, args) -> list[tuple]:
    cells = [(256, "none-eager"), (256, "none-graph"), (256, "sync-graph"), (256, "async-proc-graph"),
             (1024, "none-graph"), (1024, "sync-graph")]
    if args.device != "cuda":
        cells = [(b, m.replace("-graph", "")) for b, m in cells if m.endswith("graph")][:2]
    rows = []
    for batch, mode in cells:
        ns = SimpleNamespace(batch=batch, accum=1, steps=args.steps, log_every=args.log_every, device=args.device,
                             context=10, neg=args.neg, k=args.k, backend="torch", timeout=args.timeout,
                             hidden=512, tower="transformer", queue=args.queue, extra=RET_EXTRA)
        r = measure(bank, work / f"ret-{batch}-{mode}", mode, ns)
        rows.append(("retriever", mode, batch, r["samples_per_s"], r))
        print(f"retriever {mode:18s} batch {batch:5d}: {r['samples_per_s']:10.0f} samples/s  hits {r['hits']:.0f} "
              f"fallbacks {r['fallbacks']:.0f}", flush=True)
    return rows


def lvm_trainer(bank, run: Path, graph: str, args, batch: int) -> float:
    from vecrag.config import load_config
    from vecrag.train.loop import Trainer
    from vecrag.train.lvm_task import LVMConfig, LVMTask

    cfg = load_config(LVMConfig, "lvm-gpu", [f"train.device={args.device}", f"train.cuda_graph={graph}",
                                             f"train.batch_size={batch}", f"train.max_steps={args.steps}",
                                             f"train.log_every={args.log_every}", "train.epochs=1",
                                             "train.val_max_queries=20", "train.tensorboard=false",
                                             "train.ckpt_every=0", "train.swa_last=0", "train.patience=0"])
    cfg.bank = str(bank.path)
    task = LVMTask(bank, cfg)
    tr = Trainer(task, cfg.train, run, run_config=cfg, quiet=True)
    tr.fit()
    return median_rate(train_records(run))


def lvm_bare(bank, args, batch: int, graph: bool) -> float:
    """The LVM's step with nothing around it: ids on the device, gather, forward, loss, backward, clip, AdamW."""
    from vecrag.config import load_config
    from vecrag.models.lvm import LVM
    from vecrag.train.lvm_task import LVMConfig, lvm_loss

    cfg = load_config(LVMConfig, "lvm-gpu", [])
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = LVM(bank.dim, cfg.model, cfg.train.context).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda", capturable=graph)
    bank_t = torch.from_numpy(np.asarray(bank.vectors, np.float32)).to(dev)
    L = cfg.train.context
    ids = torch.randint(0, bank.n - L - 1, (batch,), device=dev)
    ar = torch.arange(L, device=dev)
    mask = torch.ones(batch, L, dtype=torch.bool, device=dev)
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda", cache_enabled=False)

    def step():
        ctx = bank_t[ids[:, None] + ar[None]]
        tgt = bank_t[ids + L]
        opt.zero_grad(set_to_none=False)
        with torch.autocast(**amp):
            pred = model(ctx, mask)
        loss, _ = lvm_loss(pred, tgt, cfg.loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(10):
        step()
    fn = step
    if graph:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        fn = g.replay
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batch * args.steps / (time.perf_counter() - t)


def lvm_rows(bank, work: Path, args) -> list[tuple]:
    rows = []
    cuda = args.device == "cuda"
    cells = [("trainer eager", "off"), ("trainer graph", "on")] if cuda else [("trainer", "auto")]
    for name, graph in cells:
        sps = lvm_trainer(bank, work / f"lvm-{graph}", graph, args, 256)
        rows.append(("lvm", name, 256, sps, {}))
        print(f"lvm {name:16s}: {sps:10.0f} samples/s", flush=True)
    for name, graph in ([("bare eager", False), ("bare graph", True)] if cuda else [("bare eager", False)]):
        sps = lvm_bare(bank, args, 256, graph)
        rows.append(("lvm", name, 256, sps, {}))
        print(f"lvm {name:16s}: {sps:10.0f} samples/s", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--size", type=int, default=1_000_000, help="bank vectors (random, 384-D)")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps a cell")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--neg", type=int, default=8, help="mined negatives a sample")
    p.add_argument("--k", type=int, default=128, help="candidates searched a query when mining")
    p.add_argument("--queue", type=int, default=0, help="memory-bank queue (0: none, as in step_limit.py)")
    p.add_argument("--timeout", type=float, default=0.05, help="async wait before falling back (s)")
    p.add_argument("--what", default="retriever,lvm")
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vecrag-graph-"))
    bank = random_bank(work / f"bank-{args.size}", args.size, 384)
    rows = []
    if "retriever" in args.what:
        rows += retriever_rows(bank, work, args)
    if "lvm" in args.what:
        rows += lvm_rows(bank, work, args)
    bare = {r[0]: r[3] for r in rows if r[1] == "bare graph"}
    print("\n| task | step | batch | samples/s | vs bare graphed step |\n|---|---|---:|---:|---:|")
    for task, mode, batch, sps, _ in rows:
        ref = bare.get(task)
        print(f"| {task} | {mode} | {batch} | {sps:,.0f} | {f'{100 * sps / ref:.0f} %' if ref else ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
