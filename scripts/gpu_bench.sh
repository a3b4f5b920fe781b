#!/usr/bin/env bash
# GPU benchmarks for docs/benchmarks.md and docs/scaling.md on one GPU (about 10 minutes on an H200).
# Each step writes its table (stdout) to RESULTS/*.txt and its log (stderr) to RESULTS/*.err (the tables are what the docs quote); a step that fails or times out
# leaves the others.
#   bash scripts/gpu_bench.sh RESULTS            (needs faiss-cpu importable for the index rows)
# Environment: PYTHON (python3), DEVICE (cuda), SIZE (bank size for training/index rows, 1000000),
# BIG (second size for issue 7's rows, 10000000; empty to skip).
set -uo pipefail
R="$1"; mkdir -p "$R"
PY="${PYTHON:-python3}"
DEV="${DEVICE:-cuda}"
N="${SIZE:-1000000}"
BIG="${BIG-10000000}"
step() { echo "== $(date +%T) $*"; }

step "LVM: train samples/s and step latency (b=1, b=256)"
timeout 120 "$PY" benchmarks/lvm_bench.py --device "$DEV" --batch 256 --steps 30 --reps 100 2> "$R/lvm_bench.err" \
  | tee "$R/lvm_bench.txt"
step "retriever training at $N vectors: no mining / sync / async (torch exact mining on $DEV)"
timeout 240 "$PY" benchmarks/train_retriever.py --sizes "$N" --device "$DEV" --backend torch --steps 400 \
  --batch 256 --log-every 20 --workdir /tmp/vecrag-bench 2> "$R/train_retriever.err" | tee "$R/train_retriever.txt"
step "index at $N vectors: build, queries/s, Recall@10 vs exact (torch on $DEV, faiss flat/IVF/IVF-PQ on CPU)"
timeout 300 "$PY" benchmarks/scaling.py --what index --sizes "$N" --device "$DEV" --types torch,flat,ivf,ivfpq \
  --out "$R/scaling.json" 2> "$R/scaling_index.err" | tee "$R/scaling_index.txt"
if [ -n "$BIG" ]; then
  step "retriever training at $BIG vectors: no mining / sync / async (400 steps)"
  timeout 600 "$PY" benchmarks/train_retriever.py --sizes "$BIG" --device "$DEV" --backend torch --steps 400 \
    --batch 256 --log-every 20 --workdir /tmp/vecrag-bench 2> "$R/train_retriever_big.err" | tee "$R/train_retriever_big.txt"
  step "index at $BIG vectors: exact torch, IVF and IVF-PQ (torch k-means on $DEV when faiss has no GPU)"
  timeout 900 "$PY" benchmarks/scaling.py --what index --sizes "$BIG" --device "$DEV" --types torch,ivf,ivfpq \
    --queries 2000 --qps-budget 5 --out "$R/scaling_big.json" 2> "$R/scaling_index_big.err" | tee "$R/scaling_index_big.txt"
fi
step done
