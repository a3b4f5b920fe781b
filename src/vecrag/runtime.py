"""Process-level set-up for numeric work: thread counts, duplicate OpenMP detection, device choice."""

from __future__ import annotations

import contextlib
import logging
import os

from vecrag.runtime_env import openmp_runtimes as openmp_runtimes

log = logging.getLogger(__name__)


def set_threads(torch_threads: int | None = None, faiss_threads: int | None = None) -> dict[str, int]:
    """Set torch and faiss thread counts explicitly (default: all cores for both).

    Oversubscription (torch threads + a faiss search thread's OpenMP team > cores) is safe only because
    OMP_WAIT_POLICY=PASSIVE is set before torch and faiss load (by ``vecrag.configure_runtime()``, which the CLI
    calls first): idle OpenMP workers sleep instead of spinning.
    """
    import torch

    cores = os.cpu_count() or 1
    tt = torch_threads or cores
    torch.set_num_threads(tt)
    ft = faiss_threads if faiss_threads is not None else cores
    try:
        import faiss

        faiss.omp_set_num_threads(ft)
        tune_faiss_flat(faiss, ft)
    except ImportError:
        ft = 0
    return {"torch": tt, "faiss": ft}


FAISS_BLAS_NQD = 128_000  # faiss's default since its threshold became nq * d (1.15): BLAS at nq * d >= this
_faiss_tuned: dict[int, int] = {}  # id(faiss.cvar) -> the threshold tune_faiss_flat last set there


def tune_faiss_flat(faiss, threads: int) -> None:
    """Make faiss's exact (flat) search use BLAS from a handful of queries on few cores.

    faiss 1.15 scans with its own SIMD loop below nq * d = 128,000 (tuned on many-core machines: faiss PR
    #5022); on this 2-core machine that made a 64-query search of a 100k x 384 flat index 8.5x slower than BLAS
    (488 vs 57 ms, ``benchmarks/flat_search.py``), and the CPU miner searches 64-256 queries a batch
    (docs/bugs-and-fixes.md). The crossover upstream measured scales with the OpenMP threads (PR #5109: about
    800 x threads) and matches ours (BLAS ahead from ~8 queries on 2 threads). Only faiss's own default is
    replaced: an older faiss (a threshold in queries, default 20) or a user's value is left alone."""
    cv = faiss.cvar
    if getattr(cv, "distance_compute_blas_threshold", None) in (FAISS_BLAS_NQD, _faiss_tuned.get(id(cv))):
        _faiss_tuned[id(cv)] = cv.distance_compute_blas_threshold = 800 * max(1, int(threads))  # re-tunable


def report_openmp() -> list[str]:
    """Detect duplicate OpenMP runtimes (torch's and faiss's wheels each bring one) and report them: a warning
    when OMP_WAIT_POLICY is not PASSIVE, or was set to PASSIVE only after the runtimes had loaded (by a late
    ``vecrag.configure_runtime()``; the modules already imported then are ``vecrag.LATE_OMP_MODULES``): the case
    that made training 25x slower, docs/bugs-and-fixes.md. An info line otherwise (the CLI and
    ``configure_runtime()`` set PASSIVE first, so that is the normal case). Returns the libraries."""
    from vecrag.runtime_env import LATE_OMP_MODULES, policy_set_late

    libs = openmp_runtimes()
    if len(libs) > 1:
        policy = os.environ.get("OMP_WAIT_POLICY", "(unset)")
        names = ", ".join(os.path.basename(x) for x in libs)
        if policy.upper() != "PASSIVE" or policy_set_late():
            late = (f" (set only after {', '.join(LATE_OMP_MODULES) or 'they'} had loaded)"
                    if policy_set_late() else "")
            log.warning("%d OpenMP runtimes loaded (%s) and OMP_WAIT_POLICY=%s%s: their spinning threads can slow "
                        "training and search many times over; export OMP_WAIT_POLICY=PASSIVE before starting "
                        "Python, or call vecrag.configure_runtime() before importing numpy/torch/faiss (never "
                        "KMP_DUPLICATE_LIB_OK).", len(libs), names, policy, late)
        else:
            log.info("%d OpenMP runtimes loaded (%s); OMP_WAIT_POLICY=PASSIVE keeps them from spinning against "
                     "each other", len(libs), names)
    return libs


def pick_device(name: str = "auto") -> str:
    import torch

    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def to_device(a, device):
    """A numpy array (or CPU tensor) as a tensor on ``device`` without making the host wait for the GPU.

    A copy from pageable host memory blocks the host until the stream's queued kernels have run (a stream sync);
    in a launch-bound training step (docs/benchmarks.md) that sync came once per copy. On CUDA the array goes
    through PyTorch's caching pinned-memory allocator (the block is not reused until its copy has run) and a
    non-blocking copy; elsewhere this is a plain ``.to(device)``."""
    import numpy as np
    import torch

    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@contextlib.contextmanager
def priority_stream(device):
    """Run the block on a new highest-priority CUDA stream of ``device`` (elsewhere: do nothing).

    The training loop runs in one: a background miner's kernels (its own stream, default priority) then take only
    the GPU time training leaves idle instead of delaying the trainer's kernels (docs/benchmarks.md:
    +23 % async while a step still had a sync, no change without one). The
    stream waits for the work queued before it, and the caller's stream for the block's work after it."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        yield
        return
    prev = torch.cuda.current_stream(device)
    s = torch.cuda.Stream(device, priority=torch.cuda.Stream.priority_range()[1])
    s.wait_stream(prev)
    try:
        with torch.cuda.stream(s):
            yield
    finally:
        prev.wait_stream(s)
