"""Bounded load test of `vecrag serve` on loopback (not a test; prints a table).

Builds (once, cached) a bank of 100k random unit vectors (384-D, the default encoder's dimension, so text
queries work), indexes it with FAISS (flat by default), starts `vecrag serve` in a subprocess on a free
loopback port, and drives it with N concurrent httpx async clients for a fixed duration per scenario:

  search-vec   POST /search  {"vectors": [one 384-D vector], "k": 10}      (no encoder in the path)
  search-text  POST /search  {"texts": [one sentence], "k": 10}          (encoder + search)
  next-ids     POST /next    {"context_ids": [5 consecutive ids], "k": 10} (heuristic LVM + tower, cascade K=500)

Reports requests, errors (non-2xx or transport errors), requests/s and p50/p95/p99 latency (client side), and
the decoder fallbacks counted by the server in /metrics.

    .venv/bin/python benchmarks/serve_load.py                   # 60 s per scenario, 16 clients
    .venv/bin/python benchmarks/serve_load.py --duration 20 --clients 16 --index hnsw
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SENTENCES = ["The river flows through the valley.", "Winter brings snow to the mountains.",
             "The court ruled on the contract dispute.", "Ships sail across the ocean at dawn.",
             "The committee approved the new budget.", "A comet was seen over the northern sky."]


def build_bank(path: Path, n: int, dim: int, index: str) -> None:
    from vecrag.bank.store import Bank, EncoderInfo, write_bank

    if (path / "manifest.json").exists():
        bank = Bank.open(path)
        if bank.n == n and bank.dim == dim and (index == "none" or (bank.manifest.get("index") or {}).get("type")
                                                == index):
            return
    rng = np.random.default_rng(0)
    v = rng.standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    per = 20
    arts = np.arange(n) // per
    pos = np.arange(n) % per
    texts = [f"random chunk {i} of article {a}" for i, a in zip(range(n), arts, strict=True)]
    lanes = ["legal", "creative", "science"]
    t0 = time.perf_counter()
    bank = write_bank(path, v, article_ids=arts, positions=pos, texts=texts,
                      titles={int(a): f"Article {a}" for a in np.unique(arts)},
                      chunk_lanes=[lanes[a % 3] for a in arts], encoder=EncoderInfo("all-MiniLM-L6-v2", dim))
    print(f"bank: {n} x {dim} written in {time.perf_counter() - t0:.1f} s -> {path}", flush=True)
    if index != "none":
        from vecrag.index.build import build_index

        t0 = time.perf_counter()
        build_index(bank, index)
        print(f"index: {index} built in {time.perf_counter() - t0:.1f} s", flush=True)


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


async def scenario(url: str, name: str, make_body, clients: int, duration: float) -> dict:  # noqa: ANN001
    import httpx

    path = "/next" if name.startswith("next") else "/search"
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
        async def worker(seed: int) -> None:
            nonlocal errors
            rng = np.random.default_rng(seed)
            while time.perf_counter() < stop:
                body = make_body(rng)
                t0 = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                if ok:
                    lat.append(dt)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - t0
    return {"scenario": name, "requests": len(lat) + errors, "errors": errors, "rps": len(lat) / wall,
            "p50_ms": 1000 * percentile(lat, 50), "p95_ms": 1000 * percentile(lat, 95),
            "p99_ms": 1000 * percentile(lat, 99), "wall_s": wall}


def fallbacks(url: str) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in fam.samples:
            if s.name == "vecrag_fallbacks_total":
                out[s.labels["reason"]] = s.value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bank", default="/tmp/vecrag-serve-load-bank", help="bank directory (built once, cached)")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--index", default="flat", choices=("flat", "hnsw", "ivf", "none"),
                    help="FAISS index to build (none: exact torch search)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per scenario")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--scenarios", default="search-vec,search-text,next-ids")
    ap.add_argument("--timeout-ms", type=float, default=50.0, help="server cascade timeout (0 = none)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    bank = Path(args.bank)
    build_bank(bank, args.n, args.dim, args.index)
    from vecrag.serve.ready import free_port, stop, wait_ready

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-m", "vecrag.cli", "serve", str(bank), "--port", str(port),
                               "--device", "cpu", "--log-level", "warning", "--timeout-ms", str(args.timeout_ms)],
                              env=env)
    try:
        import httpx

        why = wait_ready(url, server, 180, poll_s=0.5)
        if why:
            print(why, file=sys.stderr)
            return 1
        info = httpx.get(f"{url}/healthz").json()
        src = np.load(bank / "vectors.npy", mmap_mode="r")
        bodies = {
            "search-vec": lambda rng: {"vectors": [np.asarray(src[int(rng.integers(args.n))], np.float32).tolist()],
                                       "k": 10},
            "search-text": lambda rng: {"texts": [SENTENCES[int(rng.integers(len(SENTENCES)))]
                                                  + f" #{int(rng.integers(10**6))}"], "k": 10},
            "next-ids": lambda rng: {"context_ids": (int(rng.integers(args.n - 5)) + np.arange(5)).tolist(), "k": 10},
        }
        rows = []
        for name in args.scenarios.split(","):
            before = fallbacks(url)
            row = asyncio.run(scenario(url, name, bodies[name], args.clients, args.duration))
            after = fallbacks(url)
            diff = {k: int(v - before.get(k, 0)) for k, v in after.items()}
            row["fallbacks"] = {k: v for k, v in diff.items() if v}
            rows.append(row)
            print(f"  {name}: {row['requests']} requests, {row['rps']:.1f} req/s", flush=True)
    finally:
        stop(server)
    print(f"\nvecrag serve load test: bank {args.n} x {args.dim} ({info['index']['type']} index), "
          f"{args.clients} concurrent clients, {args.duration:.0f} s per scenario, {os.cpu_count()} CPU cores, "
          f"loopback; latency measured by the client")
    head = f"| {'scenario':<12} | {'requests':>8} | {'errors':>6} | {'req/s':>7} | {'p50 ms':>7} | {'p95 ms':>7} | " \
           f"{'p99 ms':>7} | fallbacks |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        fb = ", ".join(f"{k} {v}" for k, v in r["fallbacks"].items()) or "0"
        print(f"| {r['scenario']:<12} | {r['requests']:>8} | {r['errors']:>6} | {r['rps']:>7.1f} | "
              f"{r['p50_ms']:>7.1f} | {r['p95_ms']:>7.1f} | {r['p99_ms']:>7.1f} | {fb} |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
