"""What the bank checks cost when a bank is opened (not a test; prints a table).

Writes (once) a synthetic bank of N random unit vectors (default 600,000 x 384, float16, one short text per
chunk, 20 chunks per article) with ``vecrag.bank.store.write_bank``, then times, each in a fresh process with a warm
page cache (median of --repeats runs):

- ``open``: ``Bank.open(BANK)`` alone;
- ``open + first use``: ``Bank.open`` then what search / train touch first (a vector row, ``texts``,
  ``article_of``, the articles table);
- ``vecrag search BANK --id 3 -k 5``: the whole command (process start, imports, exact search), wall time.

for three code versions:

- ``before``: the tree given by --before-src (e.g. ``git worktree add /tmp/before HEAD`` ->
  ``/tmp/before/src``), put first on PYTHONPATH; it has no bank checks;
- ``after, recorded``: this tree, with the check record (``BANK/.verified.json``) matching the files: the
  usual case (structure checks only);
- ``after, first open``: this tree with the record deleted before every run: the full check (every vector
  finite and unit-norm, tables consistent, sha256 of every file) that runs once after a bank's files change.

Usage: ``python benchmarks/bank_open.py --before-src /tmp/before/src [--n 600000] [--bank /tmp/bank600k]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPEN_SCRIPT = """
import sys, time
t0 = time.perf_counter()
import vecrag.bank.store as vb
t1 = time.perf_counter()
bank = vb.Bank.open(sys.argv[1])
t2 = time.perf_counter()
bank.vectors_f32([3]); bank.texts[3]; bank.article_of[3]; bank.articles.num_rows
t3 = time.perf_counter()
assert vb.__file__.startswith(sys.argv[2]), (vb.__file__, sys.argv[2])
print(t2 - t1, t3 - t1)
"""


def write_synthetic_bank(path: Path, n: int, dim: int) -> None:
    import numpy as np

    from vecrag.bank.store import EncoderInfo, write_bank

    rng = np.random.default_rng(0)
    vecs = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        x = rng.standard_normal((min(100_000, n - s), dim), dtype=np.float32)
        vecs[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    per = 20
    arts = np.arange(n, dtype=np.int64) // per
    pos = (np.arange(n) % per).astype(np.int32)
    texts = [f"synthetic chunk {i} of article {i // per}" for i in range(n)]
    write_bank(path, vecs, article_ids=arts, positions=pos, texts=texts,
               titles={int(a): f"Article {a}" for a in range(int(arts[-1]) + 1)},
               encoder=EncoderInfo("synthetic-random", dim), dtype="float16")


def forget_record(bank: Path) -> None:
    from vecrag.bank.check import record_paths

    for p in record_paths(bank):
        p.unlink(missing_ok=True)


def run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def measure(bank: Path, src: Path, repeats: int, before_each: object = None) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    opens, uses, searches = [], [], []
    for _ in range(repeats):
        if callable(before_each):
            before_each()
        _, out = run_timed([sys.executable, "-c", OPEN_SCRIPT, str(bank), str(src)], env)
        o, u = map(float, out.split())
        opens.append(o)
        uses.append(u)
        if callable(before_each):
            before_each()
        wall, _ = run_timed([sys.executable, "-m", "vecrag.cli", "search", str(bank), "--id", "3", "-k", "5",
                             "--backend", "torch"], env)
        searches.append(wall)
    return {"open": statistics.median(opens), "use": statistics.median(uses), "search": statistics.median(searches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before-src", type=Path, required=True, help="src/ of the tree without the checks")
    ap.add_argument("--bank", type=Path, default=Path("/tmp/bank600k"))
    ap.add_argument("--n", type=int, default=600_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not (args.bank / "manifest.json").exists():
        t = time.perf_counter()
        write_synthetic_bank(args.bank, args.n, args.dim)
        print(f"wrote {args.bank} ({args.n:,} x {args.dim} float16) in {time.perf_counter() - t:.1f} s")
    size = sum(f.stat().st_size for f in args.bank.iterdir() if f.is_file()) / 2**20
    print(f"bank {args.bank}: {args.n:,} x {args.dim} float16, {size:.0f} MiB; {args.repeats} runs each, "
          "median, warm page cache")
    after_src = ROOT / "src"
    measure(args.bank, after_src, 1)  # warm the page cache and write the record
    rows = [("before (no checks)", measure(args.bank, args.before_src.resolve(), args.repeats)),
            ("after, recorded (usual)", measure(args.bank, after_src, args.repeats)),
            ("after, first open (full check)", measure(args.bank, after_src, args.repeats,
                                                       lambda: forget_record(args.bank)))]
    measure(args.bank, after_src, 1)  # leave the record in place
    print(f"{'version':<32} {'open':>9} {'open + first use':>17} {'vecrag search --id':>19}")
    for name, r in rows:
        print(f"{name:<32} {r['open']:>8.3f}s {r['use']:>16.3f}s {r['search']:>18.3f}s")


if __name__ == "__main__":
    main()
