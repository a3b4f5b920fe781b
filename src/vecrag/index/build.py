"""Building FAISS indexes over a bank: parameter choice, deterministic training, batched adds, IVF-PQ with
on-disk inverted lists, atomic saving and the manifest record. Searching lives in ``vecrag.index.search``.

Parameters (recorded in ``manifest["index"]["params"]``):
- ``auto``: ``flat`` below 200k vectors, else ``ivf`` with ``nlist ~ 4 sqrt(N)``.
- IVF / IVF-PQ: ``nlist`` (default ``4 sqrt(N)``, at most ``N / 39`` so that every centroid gets 39
  training points), ``nprobe`` (default ``max(8, nlist / 16)``), trained on a deterministic sample of
  ``max(64 nlist, 64 * 2**nbits)`` rows drawn with ``seed``.
- IVF-PQ: ``m`` sub-quantizers (default ``D / 8``: 48 bytes a vector at 384-D), ``nbits`` bits each, and
  ``refine`` (default 4): search ``refine * k`` candidates and re-score them exactly with the bank's vectors.
  ``on_disk=True`` stores the inverted lists in ``index/ivfpq-<stamp>.ivfdata`` (memory-mapped), built
  shard by shard with ``faiss.contrib.ondisk.merge_ondisk``, for banks whose codes do not fit in RAM.
- HNSW: ``m`` links per node (default 32), ``ef_construction`` (default 80), ``ef_search`` (default 128;
  raised to ``k`` per search).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from vecrag.bank.store import Bank
from vecrag.errors import VecragError
from vecrag.index.search import AUTO_FLAT_MAX, INDEX_DIR, KINDS, FaissIndex, index_dir, quiet_stdout

log = logging.getLogger(__name__)

ADD_BATCH = 65536
ONDISK_SHARD_ROWS = 1 << 21


def default_nlist(n: int) -> int:
    return int(max(1, min(round(4 * math.sqrt(max(n, 1))), n // 39)))


def default_nprobe(nlist: int) -> int:
    return int(min(nlist, max(8, round(nlist / 16))))


def default_pq_m(dim: int) -> int:
    if dim % 8 == 0:
        return dim // 8
    return max(m for m in range(1, dim // 4 + 1) if dim % m == 0)


def resolve_params(n: int, dim: int, kind: str = "auto", *, nlist: int | None = None, nprobe: int | None = None,
                   m: int | None = None, nbits: int = 8, ef_search: int | None = None,
                   ef_construction: int | None = None, refine: int | None = None) -> tuple[str, dict[str, Any]]:
    """Pick the index type for ``auto`` and fill in every default; returns (kind, params)."""
    if kind == "auto":
        kind = "flat" if n < AUTO_FLAT_MAX else "ivf"
    if kind not in KINDS:
        raise VecragError(f"unknown index type {kind!r}", hint=f"choose auto or one of {', '.join(KINDS)}")
    if n <= 0:
        raise VecragError("cannot index an empty bank", hint="ingest some text first")
    params: dict[str, Any] = {}
    if kind in ("ivf", "ivfpq"):
        nl = int(nlist) if nlist else default_nlist(n)
        if nl < 1 or nl > n:
            raise VecragError(f"nlist must be between 1 and the number of vectors ({n}), got {nl}",
                              hint="leave --nlist out for the default 4*sqrt(N)")
        params.update(nlist=nl, nprobe=int(min(nprobe or default_nprobe(nl), nl)))
    if kind == "ivfpq":
        pm = int(m) if m else default_pq_m(dim)
        if dim % pm:
            raise VecragError(f"PQ m={pm} must divide the dimension {dim}", hint=f"e.g. --m {default_pq_m(dim)}")
        if not 1 <= nbits <= 16:
            raise VecragError(f"nbits must be in 1..16, got {nbits}", hint="8 is the usual choice")
        params.update(m=pm, nbits=int(nbits), refine=int(4 if refine is None else refine))
    if kind == "hnsw":
        params.update(m=int(m or 32), ef_construction=int(ef_construction or 80), ef_search=int(ef_search or 128))
    return kind, params


def make_empty(kind: str, dim: int, params: dict[str, Any]) -> Any:
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        return faiss.index_factory(dim, f"IVF{params['nlist']},Flat", ip)
    if kind == "ivfpq":
        # "np": no polysemous training (it took minutes and vecrag never uses polysemous filtering);
        # PQ codebooks learn from at most 64 points per centroid (256 is faiss's default: 4x slower to train)
        idx = faiss.index_factory(dim, f"IVF{params['nlist']},PQ{params['m']}x{params['nbits']}np", ip)
        faiss.downcast_index(idx).pq.cp.max_points_per_centroid = 64
        return idx
    idx = faiss.IndexHNSWFlat(dim, params["m"], ip)
    idx.hnsw.efConstruction = params["ef_construction"]
    return idx


def training_sample(vectors: np.ndarray, kind: str, params: dict[str, Any], seed: int = 0) -> np.ndarray:
    """Deterministic (seeded) training rows, sorted for memory-map locality."""
    n = vectors.shape[0]
    want = 64 * params["nlist"]
    if kind == "ivfpq":
        want = max(want, 64 * 2 ** params["nbits"])
    want = min(n, want)
    ids = np.arange(n) if want == n else np.sort(np.random.default_rng(seed).choice(n, size=want, replace=False))
    return np.ascontiguousarray(np.asarray(vectors[ids], dtype=np.float32))


def _batches(vectors: np.ndarray, start: int, stop: int, progress: bool, desc: str) -> Any:
    from tqdm import tqdm

    with tqdm(total=stop - start, desc=desc, unit="vec", disable=not progress, leave=False) as bar:
        for s in range(start, stop, ADD_BATCH):
            e = min(stop, s + ADD_BATCH)
            yield s, np.ascontiguousarray(np.asarray(vectors[s:e], dtype=np.float32))
            bar.update(e - s)


def resolve_build_device(device: str, kind: str) -> tuple[str, str | None]:
    """(faiss device, torch device or None): ``--device cuda`` with a CUDA GPU that torch sees but a faiss
    without GPU support (faiss-cpu beside a CUDA torch) trains and assigns IVF / IVF-PQ lists with torch on ``cuda``
    (``vecrag.index.ivf_torch``); the faiss index itself stays on the CPU. Else as ``resolve_faiss_device``."""
    from vecrag.index.gpu import faiss_gpu_count, resolve_faiss_device

    if device == "cuda" and kind in ("ivf", "ivfpq") and faiss_gpu_count() == 0:
        import torch

        if torch.cuda.is_available():
            return "cpu", "cuda"
    return resolve_faiss_device(device), None


def build_from_vectors(vectors: np.ndarray, kind: str = "auto", *, device: str = "auto", threads: int | None = None,
                       progress: bool = True, seed: int = 0, **kw: Any) -> FaissIndex:
    """Build an in-memory FAISS index over ``vectors`` (N x D unit rows; a memmap is fine). Not saved.

    IVF / IVF-PQ on cuda: faiss-gpu when faiss has it, else torch k-means + torch list assignment (see
    :func:`resolve_build_device`). The result's ``trained_with`` says which: ``faiss-cpu``, ``faiss-gpu``
    or ``torch-cuda``."""
    import faiss

    from vecrag.index.gpu import gpu_train_index

    faiss.omp_set_num_threads(int(threads or os.cpu_count() or 1))
    n, dim = int(vectors.shape[0]), int(vectors.shape[1])
    kind, params = resolve_params(n, dim, kind, **kw)
    dev, torch_dev = resolve_build_device(device, kind)
    cpu = make_empty(kind, dim, params)
    work, res, trained_with = cpu, None, "faiss-cpu"
    if dev == "cuda" and kind in ("ivf", "ivfpq"):
        got = gpu_train_index(cpu)
        if got is not None:
            work, res = got
            trained_with = "faiss-gpu"
    centroids = None
    if torch_dev is not None:
        from vecrag.index import ivf_torch

        t = time.perf_counter()
        sample = training_sample(vectors, kind, params, seed)
        cents = ivf_torch.spherical_kmeans(sample, params["nlist"], seed=seed, device=torch_dev)
        t_km = time.perf_counter() - t
        ivf_torch.set_quantizer(cpu, cents, sample)  # faiss keeps the centroids; trains IVF-PQ codebooks
        centroids, trained_with = ivf_torch.centroids_on(cents, torch_dev), f"torch-{torch_dev}"
        log.info("trained %s on %s (torch k-means) in %.1f s (k-means %.1f s)", kind, torch_dev,
                 time.perf_counter() - t, t_km)
    elif not work.is_trained:
        t = time.perf_counter()
        work.train(training_sample(vectors, kind, params, seed))
        log.info("trained %s on %s in %.1f s", kind, trained_with, time.perf_counter() - t)
    for _, x in _batches(vectors, 0, n, progress, f"index {kind}"):
        if centroids is not None:
            ivf_torch.add_assigned(cpu, x, centroids, device=torch_dev)  # lists chosen on the GPU
        else:
            work.add(x)
    if work is not cpu:
        cpu = faiss.index_gpu_to_cpu(work)
        del work, res
    idx = FaissIndex(cpu, kind, params, device=dev, vectors=vectors)
    idx.trained_with = trained_with  # type: ignore[attr-defined]
    return idx


def _build_ondisk(vectors: np.ndarray, kind: str, params: dict[str, Any], out_dir: Path, *, progress: bool,
                  seed: int) -> tuple[Any, str]:
    """IVF(-PQ) with OnDiskInvertedLists: train, add shard by shard to files, merge into one .ivfdata.

    CPU only (faiss-cpu training and adds, even with ``--device cuda``): the torch GPU path of
    :func:`build_from_vectors` is not wired in here yet."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    n = int(vectors.shape[0])
    trained = make_empty(kind, int(vectors.shape[1]), params)
    trained.train(training_sample(vectors, kind, params, seed))
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    tmp = out_dir / f".build-{kind}-{stamp}"
    tmp.mkdir(parents=True)
    try:
        shard_files = []
        for i, s in enumerate(range(0, n, ONDISK_SHARD_ROWS)):
            shard = faiss.clone_index(trained)
            for b, x in _batches(vectors, s, min(n, s + ONDISK_SHARD_ROWS), progress, f"index {kind} shard {i}"):
                shard.add_with_ids(x, np.arange(b, b + len(x), dtype=np.int64))
            shard_files.append(str(tmp / f"shard-{i}.faiss"))
            faiss.write_index(shard, shard_files[-1])
            del shard
        ivfdata = f"{kind}-{stamp}.ivfdata"
        index = faiss.clone_index(trained)
        with quiet_stdout():
            merge_ondisk(index, shard_files, str(out_dir / ivfdata))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return index, ivfdata


def write_faiss_atomic(index: Any, path: Path) -> None:
    """faiss.write_index to a temp file in the same directory, fsync, rename over ``path``."""
    import faiss

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def build_index(bank: Bank, kind: str = "auto", *, nlist: int | None = None, nprobe: int | None = None,
                m: int | None = None, nbits: int = 8, ef_search: int | None = None,
                ef_construction: int | None = None, refine: int | None = None, on_disk: bool = False,
                device: str = "auto", threads: int | None = None, progress: bool = True, seed: int = 0) -> FaissIndex:
    """Build the bank's index, save it as ``BANK/index/<kind>.faiss`` and record it in the manifest.

    Returns the index ready to search (on GPU(s) when ``device`` resolves to cuda and the type allows it).
    """
    import faiss

    t0 = time.perf_counter()
    kw = dict(nlist=nlist, nprobe=nprobe, m=m, nbits=nbits, ef_search=ef_search, ef_construction=ef_construction,
              refine=refine)
    kind, params = resolve_params(bank.n, bank.dim, kind, **kw)
    dev, torch_dev = resolve_build_device(device, kind)
    out_dir = index_dir(bank)
    out_dir.mkdir(parents=True, exist_ok=True)
    ivfdata = None
    if on_disk:
        if kind not in ("ivf", "ivfpq"):
            raise VecragError(f"--on-disk needs an IVF index (ivf or ivfpq), not {kind}", hint="--type ivfpq")
        faiss.omp_set_num_threads(int(threads or os.cpu_count() or 1))
        cpu, ivfdata = _build_ondisk(bank.vectors, kind, params, out_dir, progress=progress, seed=seed)
        params["on_disk"] = True
        built, trained_with, torch_dev = None, "faiss-cpu", None
    else:
        built = build_from_vectors(bank.vectors, kind, device=device, threads=threads, progress=progress, seed=seed,
                                   **kw)
        cpu, trained_with = built.cpu_index, built.trained_with  # type: ignore[attr-defined]
    path = out_dir / f"{kind}.faiss"
    write_faiss_atomic(cpu, path)
    build_s = time.perf_counter() - t0
    record = {"type": kind, "file": f"{INDEX_DIR}/{kind}.faiss", "params": params, "ntotal": int(cpu.ntotal),
              "dim": int(cpu.d), "metric": "inner_product", "build_s": round(build_s, 3),
              "built_on": torch_dev or dev, "trained_with": trained_with,
              "faiss_version": faiss.__version__, "ivfdata": ivfdata,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    bank.update_manifest(index=record)
    _remove_stale_ivfdata(out_dir, kind, keep=ivfdata)
    log.info("built %s index over %d vectors in %.1f s -> %s", kind, cpu.ntotal, build_s, path)
    if built is not None:
        return built
    return FaissIndex(cpu, kind, params, device=dev, vectors=bank.vectors)


def _remove_stale_ivfdata(out_dir: Path, kind: str, keep: str | None) -> None:
    for p in out_dir.glob(f"{kind}-*.ivfdata"):
        if p.name != keep:
            with contextlib.suppress(OSError):
                p.unlink()
