"""Ingest throughput without the neural encoder (not a test; prints a table).

Runs the real ``vecrag.bank.ingest.ingest`` (read + decompress, clean, segment, chunk, stage, commit, assemble)
on the first ``--articles`` of a corpus with a stand-in encoder that returns random unit vectors, so the
figure is what ingest costs besides encoding. Compare with a real ingest's chunks/s to see whether the
encoder or the text pipeline bounds it (on the H200 the text pipeline did: docs/benchmarks.md).

    .venv/bin/python benchmarks/ingest_overhead.py --articles 1000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402

from vecrag.bank.encode import Encoder  # noqa: E402
from vecrag.bank.ingest import ingest  # noqa: E402
from vecrag.bank.store import EncoderInfo  # noqa: E402

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared/data/enwiki2015/part-01.jsonl.xz"


class RandomEncoder(Encoder):
    """Random unit vectors under the default encoder's name and shape: everything but the network."""

    def __init__(self) -> None:
        super().__init__(None, EncoderInfo(name="all-MiniLM-L6-v2", dim=384, pooling="mean", normalize=True,
                                           max_seq_length=256), "cpu")

    def encode(self, texts, batch_size: int = 32, progress: bool = False) -> np.ndarray:  # noqa: ANN001
        v = np.random.default_rng(len(texts)).standard_normal((len(texts), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--articles", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        bank = ingest([args.corpus], Path(d) / "bank", encoder=RandomEncoder(), max_articles=args.articles,
                      progress=False, batch_size=args.batch_size)
        dt = time.perf_counter() - t0
    print(f"| articles | chunks | seconds | chunks/s without the encoder |\n|---:|---:|---:|---:|\n"
          f"| {args.articles:,} | {bank.n:,} | {dt:.1f} | {bank.n / dt:,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
