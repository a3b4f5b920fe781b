"""Host-side id masks of one training step (not a test): ``NegativeMasker.id_mask`` time per call for the in-batch
and queue candidate lists at several shapes, over random metadata of ``--n`` chunks (50 per article)::

    python benchmarks/mask_cost.py                  # B x K = 64 x 256, 256 x 256, 256 x 4096
    PYTHONPATH=OLD/src python benchmarks/mask_cost.py   # another tree, for a side-by-side ratio

The checksum (mask entries set) must match between trees: the masks themselves may not change.
"""

from __future__ import annotations

import argparse
import sys
import time

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402

from vecrag.train.losses import ChunkMeta, NegativeMasker  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="chunks in the metadata")
    p.add_argument("--shapes", default="64x256,256x256,256x4096", help="BxK shapes (batch x candidates)")
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--window", type=int, default=2)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    meta = ChunkMeta(np.arange(args.n) // 50, np.arange(args.n) % 50, rng.integers(0, args.n, args.n))
    masker = NegativeMasker(meta, window=args.window)
    print(f"id_mask on the host: {args.n} chunks, window {args.window}, {args.reps} calls per shape "
          f"({vecrag.__file__})")
    print(f"{'B':>5} {'K':>6} {'ms/call':>8} {'checksum':>9}")
    for shape in args.shapes.split(","):
        b, k = (int(x) for x in shape.split("x"))
        pos = rng.integers(0, args.n, b)
        cand = np.concatenate([pos[: k // 4], rng.integers(0, args.n, k - k // 4)])  # some hits on purpose
        for _ in range(3):
            masker.id_mask(pos, cand)
        t = time.perf_counter()
        for _ in range(args.reps):
            out = masker.id_mask(pos, cand)
        ms = 1e3 * (time.perf_counter() - t) / args.reps
        print(f"{b:>5} {k:>6} {ms:>8.3f} {sum(int(v.sum()) for v in out.values()):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
