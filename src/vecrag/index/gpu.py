"""FAISS on GPUs: move a CPU index to one GPU or shard it over all visible GPUs.

Rules (docs/design.md, and FAISS's own documentation):

- A FAISS GPU index is NOT thread-safe, not even for ``search``. Each GPU index built here is owned by
  the :class:`vecrag.index.search.FaissIndex` that wraps it, and that wrapper serialises every call into it
  with a lock; use the wrapper from one thread (e.g. the dedicated miner thread) and never share the raw
  GPU index. Never use it in forked DataLoader workers.
- GPU search supports ``k <= 2048`` (and ``nprobe <= 2048``); larger ``k`` is answered by the CPU copy
  of the index, which :class:`FaissIndex` keeps.
- HNSW and on-disk inverted lists have no GPU version here: they stay on the CPU (logged).
- Several GPUs: ``GpuMultipleClonerOptions(shard=True)`` splits the vectors over the GPUs (an
  ``IndexShards`` whose results are merged), so the bank may be ``n_gpus`` times larger than one GPU;
  ``useFloat16`` halves GPU memory (flat/IVF-Flat store fp16; IVF-PQ uses fp16 lookup tables).
- Which device answers a search is decided by :func:`search_route` (pure, tested on the CPU).

Status: this GPU path needs a faiss build with GPU support (conda ``faiss-gpu``, or ``faiss-gpu-cu12``
wheels). Where none can be installed (only faiss-cpu wheels), this module is
exercised only where such a build exists; on that machine faiss runs on the CPU cores and the *measured*
GPU search path is :class:`vecrag.index.search.ExactTorchIndex` (torch matmul + top-k, fp16, in query chunks),
see ``benchmarks/scaling.py`` and ``docs/scaling.md``.
"""

from __future__ import annotations

import logging
from typing import Any

from vecrag.errors import VecragError

log = logging.getLogger(__name__)

GPU_MAX_K = 2048
GPU_MAX_NPROBE = 2048


def search_route(k: int, *, has_gpu: bool, nprobe: int | None = None, max_k: int = GPU_MAX_K,
                 max_nprobe: int = GPU_MAX_NPROBE) -> str:
    """``"gpu"`` or ``"cpu"``: which copy of a FAISS index answers a search for ``k`` results (``k`` already
    multiplied by any re-ranking factor). FAISS GPU indexes refuse ``k > 2048`` and clamp ``nprobe`` to 2048,
    so those searches go to the CPU copy (exact parameters, slower)."""
    if not has_gpu or k > max_k or (nprobe is not None and nprobe > max_nprobe):
        return "cpu"
    return "gpu"


def faiss_gpu_count() -> int:
    """Number of GPUs FAISS can use (0 for faiss-cpu builds or machines without GPUs)."""
    try:
        import faiss
    except ImportError:
        return 0
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "get_num_gpus"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001  (a broken CUDA driver reads as "no GPU")
        return 0


def resolve_faiss_device(device: str) -> str:
    """``auto`` -> ``cuda`` when FAISS has GPU support and a GPU is visible, else ``cpu``."""
    if device not in ("auto", "cpu", "cuda"):
        raise VecragError(f"unknown index device {device!r}", hint="use --device auto, cpu or cuda")
    n = faiss_gpu_count()
    if device == "auto":
        return "cuda" if n > 0 else "cpu"
    if device == "cuda" and n == 0:
        raise VecragError("--device cuda needs faiss with GPU support and a visible GPU; this faiss has "
                          f"{'no GPU support' if not _has_gpu_build() else 'no GPU visible'}",
                          hint="install faiss-gpu (conda: faiss-gpu, pip: faiss-gpu-cu12), or use "
                               "--device cpu; with a CUDA GPU that torch sees, IVF / IVF-PQ builds use it "
                               "without faiss-gpu, and `open_index(bank, backend='torch')` searches exactly on "
                               "a GPU")
    return device


def _has_gpu_build() -> bool:
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources")


def gpu_supported(cpu_index: Any) -> bool:
    """Whether this CPU index type can be cloned to a GPU (flat and IVF in RAM; not HNSW, not on-disk)."""
    import faiss

    if isinstance(cpu_index, faiss.IndexHNSW):
        return False
    try:
        ivf = faiss.extract_index_ivf(cpu_index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        il = faiss.downcast_InvertedLists(ivf.invlists)
        return not isinstance(il, faiss.OnDiskInvertedLists)
    return isinstance(cpu_index, faiss.IndexFlat)


def to_gpu(cpu_index: Any, *, shard: bool = True, fp16: bool = False, ngpu: int | None = None) -> Any | None:
    """Clone ``cpu_index`` to GPU(s); ``None`` (with a warning) when the type or the GPU refuses it."""
    import faiss

    n = faiss_gpu_count() if ngpu is None else ngpu
    if n <= 0:
        return None
    if not gpu_supported(cpu_index):
        log.info("index type %s stays on the CPU (no GPU version)", type(cpu_index).__name__)
        return None
    try:
        if n == 1:
            res = faiss.StandardGpuResources()
            co = faiss.GpuClonerOptions()
            co.useFloat16 = fp16
            gidx = faiss.index_cpu_to_gpu(res, 0, cpu_index, co)
            gidx.referenced_objects = [res]  # keep the resources alive as long as the index
            return gidx
        co = faiss.GpuMultipleClonerOptions()
        co.shard = shard
        co.useFloat16 = fp16
        return faiss.index_cpu_to_all_gpus(cpu_index, co=co, ngpu=n)
    except (RuntimeError, MemoryError) as e:  # e.g. out of GPU memory, IVF-PQ code size not supported
        log.warning("could not move the index to %d GPU(s) (%s); searching on the CPU", n, e)
        return None


def gpu_train_index(empty_cpu_index: Any) -> tuple[Any, Any] | None:
    """Clone an untrained IVF index to GPU 0 for training/adding; returns (gpu_index, resources) or None."""
    import faiss

    if faiss_gpu_count() == 0 or not gpu_supported(empty_cpu_index):
        return None
    try:
        res = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(res, 0, empty_cpu_index), res
    except RuntimeError as e:
        log.warning("building on the CPU: cannot clone the index to the GPU (%s)", e)
        return None


def set_gpu_param(gpu_index: Any, name: str, value: int) -> None:
    import faiss

    if name == "nprobe":
        value = min(int(value), GPU_MAX_NPROBE)
    faiss.GpuParameterSpace().set_index_parameter(gpu_index, name, int(value))
