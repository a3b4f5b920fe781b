"""LVM throughput: training samples/s per architecture and inference latency per step (batch 1 and 256).

Random unit vectors (no bank needed), context L=10, 384-D by default, the lvm-default model shape
(hidden 256, 2 layers, 4 heads). Training = forward + cosine/InfoNCE loss + backward + AdamW step.
Not a test; prints a table.

    .venv/bin/python benchmarks/lvm_bench.py --device cpu
    .venv/bin/python benchmarks/lvm_bench.py --device cuda --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import time

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vecrag.models.lvm import LVM, LVM_KINDS, LVMModelConfig  # noqa: E402
from vecrag.runtime import set_threads  # noqa: E402
from vecrag.train.lvm_task import LVMLossConfig, lvm_loss  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def batch(n: int, L: int, dim: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ctx = F.normalize(torch.randn(n, L, dim, device=device), dim=-1)
    lengths = torch.randint(1, L + 1, (n,), device=device)
    mask = torch.arange(L, device=device)[None, :] >= (L - lengths)[:, None]
    return ctx * mask[:, :, None], mask, F.normalize(torch.randn(n, dim, device=device), dim=-1)


def train_rate(model: LVM, args: argparse.Namespace) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_cfg = LVMLossConfig(w_cos=1.0, w_nce=0.1)
    amp = args.device.startswith("cuda")
    data = [batch(args.batch, args.context, args.dim, args.device) for _ in range(4)]
    model.train()

    def step(i: int) -> None:
        ctx, mask, tgt = data[i % len(data)]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss, _ = lvm_loss(model(ctx, mask), tgt, loss_cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        step(i)
    sync(args.device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    sync(args.device)
    return args.steps * args.batch / (time.perf_counter() - t0)


@torch.no_grad()
def latency_ms(model: LVM, n: int, args: argparse.Namespace) -> tuple[float, float]:
    model.eval()
    ctx, mask, _ = batch(n, args.context, args.dim, args.device)
    for _ in range(args.warmup):
        model(ctx, mask)
    times = []
    for _ in range(args.reps):
        sync(args.device)
        t0 = time.perf_counter()
        model(ctx, mask)
        sync(args.device)
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--context", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64, help="training batch size")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps")
    ap.add_argument("--reps", type=int, default=50, help="timed inference calls")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--kinds", default=",".join(LVM_KINDS))
    args = ap.parse_args()
    threads = set_threads(args.threads)["torch"] if args.device == "cpu" else None
    torch.manual_seed(0)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{threads} threads"
    print(f"device {args.device} ({where})"
          f", dim {args.dim}, L {args.context}, hidden {args.hidden}, layers {args.layers}, train batch {args.batch}, "
          f"torch {torch.__version__}")
    head = f"{'arch':<12}{'params':>10}{'train samples/s':>17}{'b=1 ms (p50/p95)':>20}{'b=256 ms (p50/p95)':>22}"
    print(head + "\n" + "-" * len(head))
    for kind in args.kinds.split(","):
        cfg = LVMModelConfig(kind=kind, hidden=args.hidden, layers=args.layers, heads=args.heads)
        model = LVM(args.dim, cfg, args.context).to(args.device)
        torch.nn.init.normal_(model.head.weight, std=0.01)  # as after training
        params = sum(p.numel() for p in model.parameters())
        rate = train_rate(model, args)
        l1 = latency_ms(model, 1, args)
        l256 = latency_ms(model, 256, args)
        print(f"{kind:<12}{params:>10,}{rate:>17,.0f}{l1[0]:>12.2f} / {l1[1]:<6.2f}{l256[0]:>13.2f} / {l256[1]:<6.2f}")


if __name__ == "__main__":
    main()
