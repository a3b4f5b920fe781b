"""Open a bank's search index: the FAISS index recorded in the manifest, checked against the bank, or an exact
torch search when none is saved (:func:`open_index`)."""

from __future__ import annotations

import json
import logging
from typing import Any

from vecrag.bank.store import Bank
from vecrag.errors import VecragError
from vecrag.index.search import ExactTorchIndex, FaissIndex, SearchIndex, read_faiss

log = logging.getLogger(__name__)


def load_index(bank: Bank, device: str = "auto", *, threads: int | None = None, nprobe: int | None = None,
               ef_search: int | None = None, fp16: bool = False, shard: bool = True) -> FaissIndex:
    """Load the index recorded in ``manifest["index"]`` and check it against the bank."""
    import faiss

    if threads is not None:
        faiss.omp_set_num_threads(int(threads))
    rec = _manifest_index(bank)
    if rec is None:
        raise VecragError("the bank has no saved index", path=bank.path,
                          hint=f"build one with `vecrag index {bank.path}`")
    kind = rec.get("type", "")
    path = bank.path / rec["file"]
    cpu = read_faiss(path, kind=kind, on_disk=bool(rec.get("ivfdata")))
    if int(cpu.d) != bank.dim:
        raise VecragError(f"index holds {cpu.d}-D vectors but the bank is {bank.dim}-D", path=path,
                          hint=f"rebuild it with `vecrag index {bank.path} --type {kind}`")
    if int(cpu.ntotal) != bank.n:
        raise VecragError(f"index holds {cpu.ntotal} vectors but the bank has {bank.n} (stale index)", path=path,
                          hint=f"rebuild it with `vecrag index {bank.path} --type {kind}`")
    params = dict(rec.get("params", {}))
    idx = FaissIndex(cpu, kind, params, device=device, vectors=bank.vectors, fp16=fp16, shard=shard)
    idx.set_search_params(nprobe=nprobe, ef_search=ef_search)
    return idx


def _manifest_index(bank: Bank) -> dict[str, Any] | None:
    """The manifest's index record, re-read from disk (another process may have built one meanwhile)."""
    try:
        m = json.loads((bank.path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        m = bank.manifest
    return m.get("index") or None


def open_index(bank: Bank, backend: str = "auto", device: str = "auto", *, vectors: Any = None,
               **kwargs: Any) -> SearchIndex:
    """The bank's saved FAISS index (``faiss``), an exact torch search (``torch``), or ``auto``: the saved
    index when there is one and faiss imports, else exact search. ``vectors``: a tensor of the bank already
    on ``device`` for exact search to share (ExactTorchIndex), or a function returning one (called only when
    exact search is chosen: it may make a copy)."""
    def exact() -> ExactTorchIndex:
        src = vectors() if callable(vectors) else vectors
        if src is None:
            return ExactTorchIndex(bank.vectors, device=device)
        return ExactTorchIndex(src, device=device, dtype=src.dtype)

    if backend not in ("auto", "faiss", "torch"):
        raise VecragError(f"unknown search backend {backend!r}", hint="choose auto, faiss or torch")
    if backend == "torch":
        return exact()
    has_faiss = True
    try:
        import faiss  # noqa: F401
    except ImportError:
        has_faiss = False
    if backend == "faiss" or (has_faiss and _manifest_index(bank) is not None):
        return load_index(bank, device=device, **kwargs)
    log.info("no saved index%s: exact search with torch", "" if has_faiss else " usable (faiss not installed)")
    return exact()
