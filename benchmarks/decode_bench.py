"""Decoder latency on this CPU (not a test; prints a table).

- decision: ``vecrag.decode.policy.decide`` alone on a k-shortlist (mean, p95), no search;
- full step: ``Decoder.step`` = LVM (GRU, 2 layers, hidden 256, context 16) + query tower (GRU, hidden 256)
  + guarded index search (top-K=500, in the search thread) + fused/lane re-rank + decision, p50/p95, with the
  no-repeat rule as shipped (every chunk shown so far and the prompt's chunks banned: the search reaches
  deeper as the rollout grows) and without it (``no-repeat off``), side by side,
  at bank sizes 10k / 100k / 1M of random 384-D unit vectors, FAISS flat and IVF (nlist ~ 4 sqrt(N) capped
  at 1024 on 1M, trained on a sample of 64 x nlist vectors, nprobe 16).

Models are untrained (weights do not change latency). Random vectors are a worst case for IVF recall, not
for latency. Usage: ``python benchmarks/decode_bench.py [--sizes 10000,100000,1000000] [--steps 200]``.
"""

from __future__ import annotations

import argparse
import gc
import time

import vecrag

vecrag.configure_runtime()  # OMP_WAIT_POLICY + GOMP_SPINCOUNT before numpy/torch/faiss load their OpenMP

import numpy as np  # noqa: E402


def unit_rows(rng: np.random.Generator, n: int, d: int, block: int = 100_000) -> np.ndarray:
    out = np.empty((n, d), np.float32)
    for s in range(0, n, block):
        x = rng.standard_normal((min(block, n - s), d), dtype=np.float32)
        out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def bench_decision(d: int, k: int, n: int = 3000) -> tuple[float, float]:
    from vecrag.decode.policy import Policy, decide

    rng = np.random.default_rng(1)
    p = Policy(blend_tau=0.05)  # a calibrated BLEND: the shortlist averaged by score
    v = unit_rows(rng, n, d)
    cand = unit_rows(rng, n * k, d).reshape(n, k, d)
    cand[:, 0] = 0.93 * v + 0.37 * cand[:, 0]  # some SNAP/BLEND work, not only NOVEL
    cand[:, 0] /= np.linalg.norm(cand[:, 0], axis=1, keepdims=True)
    ids = np.arange(k, dtype=np.int64)
    scores = np.sort(rng.uniform(0.3, 0.6, (n, k)), axis=1)[:, ::-1]
    recent = list(range(8))
    ts = []
    for i in range(n):
        t0 = time.perf_counter()
        decide(v[i], cand[i], ids, p, recent, scores=scores[i])
        ts.append(1000 * (time.perf_counter() - t0))
    return float(np.mean(ts)), pct(ts, 95)


def make_index(kind: str, vecs: np.ndarray, rng: np.random.Generator) -> tuple[object, float]:
    import faiss

    from vecrag.index.search import FaissIndex

    t0 = time.perf_counter()
    d = vecs.shape[1]
    if kind == "flat":
        cpu = faiss.IndexFlatIP(d)
        cpu.add(vecs)
        params: dict = {}
    else:
        nlist = min(1024, int(4 * np.sqrt(len(vecs))))
        cpu = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = vecs[rng.choice(len(vecs), size=min(len(vecs), 64 * nlist), replace=False)]
        cpu.train(sample)
        cpu.add(vecs)
        params = {"nlist": nlist, "nprobe": 16}
    return FaissIndex(cpu, kind, params, device="cpu"), time.perf_counter() - t0


def bench_steps(index: object, vecs: np.ndarray, steps: int, K: int, no_repeat: bool = True) -> dict[str, float]:
    import torch

    from vecrag.decode.cascade import CascadeConfig
    from vecrag.decode.generate import Decoder
    from vecrag.decode.policy import Policy
    from vecrag.decode.profiles import PolicySet
    from vecrag.models.lvm import LVM, LVMModelConfig
    from vecrag.models.towers import QueryTower, TowerConfig
    from vecrag.scoring.predictors import TorchPredictor

    torch.manual_seed(0)
    d = vecs.shape[1]
    lvm = TorchPredictor(LVM(d, LVMModelConfig(kind="gru", hidden=256, layers=2), 16), "lvm-gru", 16)
    tower = TorchPredictor(QueryTower(d, TowerConfig(kind="gru", hidden=256)), "tower-gru", 16)
    texts = ["chunk"] * len(vecs)
    # thresholds of a calibrated MiniLM bank's neutral profile (the bands only change which branch runs)
    policies = PolicySet("neutral", Policy(tau_snap=0.82, tau_novel=0.57, alpha_points=((0.7, 0.75),),
                                          blend_tau=0.05), {})
    dec = Decoder(vecs, texts, None, index, lvm, tower, policies,
                  CascadeConfig(K=K, k=10, timeout_ms=10_000.0, w_lvm=0.0, lane_lambda=0.05, w_topic=0.25),
                  exclude_context=True, no_repeat=no_repeat, feedback="shown")
    rng = np.random.default_rng(2)
    prompt = list(unit_rows(rng, 16, d))
    warm = 5
    lat: dict[str, list[float]] = {}
    try:
        for i, st in enumerate(dec.generate(prompt, steps + warm)):
            if i >= warm:
                for key, v in st.latency_ms.items():
                    lat.setdefault(key, []).append(v)
    finally:
        dec.close()
    out = {f"{k}_p50": pct(v, 50) for k, v in lat.items()}
    out.update({f"{k}_p95": pct(v, 95) for k, v in lat.items()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--kinds", default="flat,ivf")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--K", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from vecrag.runtime import set_threads

    threads = set_threads(args.threads, args.threads)
    print(f"threads {threads}; dim {args.dim}; K {args.K}; steps {args.steps} per config", flush=True)
    print("\ndecision alone (decide(), no search):")
    print(f"{'shortlist k':>12} {'mean ms':>9} {'p95 ms':>9}")
    for k in (10, 500):
        m, p95 = bench_decision(args.dim, k)
        print(f"{k:>12} {m:>9.3f} {p95:>9.3f}", flush=True)

    print("\nfull step (LVM + tower + search + re-rank + decision), ms:")
    head = (f"{'bank':>9} {'index':>6} {'no-repeat':>9} {'build s':>8} {'lvm p50':>8} {'tower p50':>9} "
            f"{'search p50':>10} {'search p95':>10} {'rerank p50':>10} {'decide p50':>10} {'step p50':>9} "
            f"{'step p95':>9}")
    print(head)
    print("-" * len(head), flush=True)
    rng = np.random.default_rng(0)
    for n in (int(x) for x in args.sizes.split(",")):
        vecs = unit_rows(rng, n, args.dim)
        for kind in args.kinds.split(","):
            index, build_s = make_index(kind, vecs, rng)
            steps = args.steps if not (kind == "flat" and n >= 1_000_000) else max(30, args.steps // 4)
            for no_repeat in (True, False):
                r = bench_steps(index, vecs, steps, args.K, no_repeat)
                print(f"{n:>9,} {kind:>6} {'on' if no_repeat else 'off':>9} {build_s:>8.1f} {r['lvm_p50']:>8.2f} "
                      f"{r['tower_p50']:>9.2f} {r['search_p50']:>10.2f} {r['search_p95']:>10.2f} "
                      f"{r['rerank_p50']:>10.2f} {r['decide_p50']:>10.3f} {r['total_p50']:>9.2f} "
                      f"{r['total_p95']:>9.2f}", flush=True)
            del index
            gc.collect()
        del vecs
        gc.collect()


if __name__ == "__main__":
    main()
