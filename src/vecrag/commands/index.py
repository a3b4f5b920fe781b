"""`vecrag index BANK --type auto|flat|ivf|hnsw|ivfpq`: build, save and measure the bank's FAISS index."""

from __future__ import annotations

import argparse
import time

COMMAND = ("index",)
HELP = "build the bank's FAISS inner-product index (flat / IVF / HNSW / IVF-PQ, CPU or GPU)"
DESCRIPTION = """\
Build a FAISS inner-product index over the bank's vectors and save it as BANK/index/<type>.faiss (written
atomically), recording type and parameters in the manifest. --type auto picks exact flat search below
200,000 vectors and IVF above (nlist ~ 4*sqrt(N), nprobe recorded). ivfpq compresses vectors (m
sub-quantizers of nbits) and re-ranks refine*k candidates exactly with the bank vectors (--refine 0 turns
this off); --on-disk keeps its inverted lists in a memory-mapped file for banks larger than RAM.
--device auto uses the GPU(s) when faiss has GPU support (one GPU, or sharded over all visible GPUs).
--device cuda with only faiss-cpu installed (and a GPU torch sees) trains IVF / IVF-PQ with a torch k-means
on the GPU and assigns the vectors to their lists there; the index itself is searched on the CPU.
Prints the build time and, for approximate types, Recall@10 against exact search (fp32) on 1,000 bank
vectors sampled as queries (ids drawn with a fixed seed) and queries/s for that batch; both are recorded in
manifest["index"] (recall_at_10, recall_queries, queries_per_s).

Example: vecrag index banks/wiki-500 --type hnsw
"""

RECALL_QUERIES = 1000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bank", metavar="BANK", help="bank directory")
    p.add_argument("--type", default="auto", choices=["auto", "flat", "ivf", "hnsw", "ivfpq"], help="index type")
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4*sqrt(N))")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query (default max(8, nlist/16))")
    p.add_argument("--m", type=int, default=None, help="IVF-PQ sub-quantizers (default D/8) or HNSW links (32)")
    p.add_argument("--nbits", type=int, default=8, help="IVF-PQ bits per sub-quantizer")
    p.add_argument("--refine", type=int, default=None, help="IVF-PQ: re-rank refine*k candidates exactly (default 4)")
    p.add_argument("--ef-search", type=int, default=None, help="HNSW efSearch (default 128)")
    p.add_argument("--on-disk", action="store_true", help="IVF/IVF-PQ inverted lists in a memory-mapped file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="build/search device")
    p.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: all cores)")
    p.add_argument("--no-recall", action="store_true", help="skip the Recall@10 check")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import sys

    import numpy as np

    from vecrag.bank.store import Bank
    from vecrag.fsutil import fs_error, probe_writable
    from vecrag.index.build import build_index
    from vecrag.index.search import ExactTorchIndex, index_dir, recall_vs_exact
    from vecrag.runtime import report_openmp, set_threads

    set_threads(faiss_threads=args.threads)
    report_openmp()
    bank = Bank.open(args.bank)
    t = time.perf_counter()
    try:
        probe_writable(index_dir(bank))  # fail before a long build, not after it
        idx = build_index(bank, args.type, nlist=args.nlist, nprobe=args.nprobe, m=args.m, nbits=args.nbits,
                          refine=args.refine, ef_search=args.ef_search, on_disk=args.on_disk, device=args.device,
                          threads=args.threads, progress=not args.quiet and sys.stderr.isatty())
    except OSError as e:
        raise fs_error(e, what="cannot save the index into the bank (the bank and any old index are unchanged)",
                       hint="make the bank's folder writable (or copy the bank somewhere writable, or free space) "
                            "and rerun the command") from e
    secs = time.perf_counter() - t
    rec = bank.manifest["index"]
    print(f"index     {rec['type']} over {rec['ntotal']:,} x {rec['dim']} vectors -> {bank.path / rec['file']}")
    print(f"params    {rec['params']}  (device {idx.device})")
    print(f"build     {secs:.2f} s")
    if rec["type"] != "flat" and not args.no_recall:
        import torch

        rng = np.random.default_rng(0)
        ids = np.sort(rng.choice(bank.n, size=min(RECALL_QUERIES, bank.n), replace=False))
        q = bank.vectors_f32(ids)
        # the reference: exact fp32 scores (on a GPU when torch sees one, else on the CPU)
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        exact = ExactTorchIndex(bank.vectors, device=dev, dtype=torch.float32, resident=bank.n <= 2_000_000)
        r = recall_vs_exact(idx, exact, q, k=10)
        t = time.perf_counter()
        idx.search(q, 10)
        qps = len(q) / max(time.perf_counter() - t, 1e-9)
        print(f"recall    Recall@10 vs exact = {r:.4f} on {len(q)} bank vectors as queries; {qps:,.0f} queries/s")
        bank.update_manifest(index={**rec, "recall_at_10": round(r, 4), "recall_queries": len(q),
                                    "queries_per_s": round(qps, 1)})
    return 0
