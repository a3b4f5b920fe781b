"""Shared fixtures: small synthetic banks with real sequential structure (no encoder needed).

``synthetic_bank`` vectors follow a per-article random walk on the unit sphere, so the next chunk is close
to the previous one (adjacent cosine ~0.5-0.6, random pairs ~0), like real text embeddings.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import vecrag

# The `vecrag` command's process set-up (OMP_WAIT_POLICY + GOMP_SPINCOUNT, ...), before numpy/torch/faiss load
# their OpenMP runtimes: `import vecrag` alone sets nothing (tests/test_runtime.py).
vecrag.configure_runtime()
# Tests never use the network (the Makefile exports the same): a hub name then fails at once instead of after
# huggingface_hub's retries (75 s with no network). Tests of the online default run in their own subprocess.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vecrag.bank.store import Bank, EncoderInfo, write_bank  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ENWIKI_PART1 = SHARED_DATA / "enwiki2015" / "part-01.jsonl.xz"


def random_walk_vectors(n_articles: int, per_article: int | list[int], dim: int, seed: int = 0,
                        step: float = 0.8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors, article ids and positions for articles whose chunks drift on the sphere."""
    rng = np.random.default_rng(seed)
    counts = [per_article] * n_articles if isinstance(per_article, int) else list(per_article)
    vecs, arts, pos = [], [], []
    for a, c in enumerate(counts):
        topic = rng.standard_normal(dim)
        topic /= np.linalg.norm(topic)
        v = topic.copy()
        for p in range(c):
            v = topic + v * 0.9 + step * rng.standard_normal(dim) / np.sqrt(dim) * 3
            v /= np.linalg.norm(v)
            vecs.append(v.copy())
            arts.append(a)
            pos.append(p)
    return np.asarray(vecs, np.float32), np.asarray(arts, np.int64), np.asarray(pos, np.int32)


def make_synthetic_bank(path: Path, n_articles: int = 60, per_article: int | list[int] = 12, dim: int = 32,
                        seed: int = 0, lanes: list[str] | None = None, dtype: str = "float32") -> Bank:
    vecs, arts, pos = random_walk_vectors(n_articles, per_article, dim, seed)
    texts = [f"article {a} chunk {p}" for a, p in zip(arts, pos, strict=True)]
    chunk_lanes = [lanes[a % len(lanes)] for a in arts] if lanes else None
    return write_bank(path, vecs, article_ids=arts, positions=pos, texts=texts,
                      titles={int(a): f"Article {a}" for a in np.unique(arts)}, chunk_lanes=chunk_lanes,
                      encoder=EncoderInfo("synthetic-random-walk", dim), dtype=dtype)


@pytest.fixture
def synthetic_bank(tmp_path: Path) -> Bank:
    return make_synthetic_bank(tmp_path / "bank")


@pytest.fixture(scope="session")
def shared_corpus() -> Path:
    if not ENWIKI_PART1.exists():
        pytest.skip(f"shared corpus not found at {ENWIKI_PART1}")
    return ENWIKI_PART1


def steps_without_gpu_sync(trainer, warmup: int = 2, steps: int = 6) -> None:
    """Train ``warmup`` optimizer steps, then up to ``steps`` in all under ``torch.cuda.set_sync_debug_mode("error")``
    (any host-GPU sync raises), on the loop's priority stream (CUDA tests only; log steps must not fall inside)."""
    import torch

    from vecrag.runtime import priority_stream

    with priority_stream(trainer.device):
        trainer.cfg.max_steps = warmup
        trainer._train_epoch()  # one-time uploads (metadata, optimizer state) and allocations
        trainer.cfg.max_steps = steps
        torch.cuda.set_sync_debug_mode("error")
        try:
            trainer._train_epoch()
        finally:
            torch.cuda.set_sync_debug_mode(0)


def make_back_bank(path: Path) -> Bank:
    """Two articles of 4 chunks; article 0 = c0..c3 with c1 = 0.8 c0 + 0.6 c2, the rest orthogonal: a query c1
    (context [c1], target c2) ranks c0, an article chunk before the context, above the target (never going back)."""
    e = np.eye(8, dtype=np.float32)
    vecs = np.stack([e[0], 0.8 * e[0] + 0.6 * e[1], e[1], e[2], e[3], e[4], e[5], e[6]])
    return write_bank(path, vecs, article_ids=np.repeat([0, 1], 4), positions=np.tile(np.arange(4), 2),
                      texts=[f"t{i}" for i in range(8)], titles={0: "A", 1: "B"}, encoder=EncoderInfo("x", 8),
                      dtype="float32")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` (e.g. "300k") mounted at ``path`` for the block, unmounted after; the test is skipped
    where it cannot be mounted (not root, no mount permission)."""
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)

