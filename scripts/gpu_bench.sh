#!/usr/bin/env bash
# GPU benchmarks for docs/benchmarks.md and docs/scaling.md on one GPU machine.
# Each stage writes its table (stdout) to RESULTS/<stage>.txt and its log (stderr) to RESULTS/<stage>.err (the
# tables are what the docs quote); a stage that fails or times out leaves the others.
#   bash scripts/gpu_bench.sh RESULTS            (needs faiss-cpu importable for the index rows)
# Environment:
#   STAGES   which stages, in order (default: all of "train big_train big_index cpu_train lvm index profile")
#     train      retriever training samples/s at SIZE: no mining / sync / async thread / async process (400 steps)
#     big_train  the same at BIG vectors
#     big_index  index at BIG: exact torch, IVF and IVF-PQ (torch k-means on the GPU when faiss has no GPU)
#     cpu_train  the training cells at SIZE on this machine's CPU cores (the same code on the CPU)
#     lvm        LVM train samples/s and step latency
#     index      index at SIZE: torch, flat, IVF, IVF-PQ
#     profile    torch.profiler op tables of the training cells at SIZE (no mining / async thread / process)
#   PYTHON (python3), DEVICE (cuda), SIZE (1000000), BIG (10000000), MODES (none,sync,async,async-proc),
#   CPU_STEPS (optimizer steps of a CPU cell, 40)
set -uo pipefail
R="$1"; mkdir -p "$R"
PY="${PYTHON:-python3}"
DEV="${DEVICE:-cuda}"
N="${SIZE:-1000000}"
BIG="${BIG:-10000000}"
MODES="${MODES:-none,sync,async,async-proc}"
STAGES="${STAGES:-train big_train big_index cpu_train lvm index profile}"
step() { echo "== $(date +%T) $*"; }
TR=(benchmarks/train_retriever.py --backend torch --batch 256 --log-every 20 --workdir /tmp/vecrag-bench)

for stage in $STAGES; do
  step "$stage"
  case "$stage" in
    train)
      timeout 420 "$PY" "${TR[@]}" --sizes "$N" --device "$DEV" --modes "$MODES" --steps 400 ;;
    big_train)
      timeout 600 "$PY" "${TR[@]}" --sizes "$BIG" --device "$DEV" --modes "$MODES" --steps 400 ;;
    big_index)
      timeout 900 "$PY" benchmarks/scaling.py --what index --sizes "$BIG" --device "$DEV" --types torch,ivf,ivfpq \
        --queries 2000 --qps-budget 5 --out "$R/big_index.json" ;;
    cpu_train)
      timeout 420 "$PY" "${TR[@]}" --sizes "$N" --device cpu --modes "$MODES" --steps "${CPU_STEPS:-40}" \
        --log-every 5 ;;
    lvm)
      timeout 120 "$PY" benchmarks/lvm_bench.py --device "$DEV" --batch 256 --steps 30 --reps 100 ;;
    index)
      timeout 300 "$PY" benchmarks/scaling.py --what index --sizes "$N" --device "$DEV" --types torch,flat,ivf,ivfpq \
        --out "$R/index.json" ;;
    profile)
      timeout 300 "$PY" "${TR[@]}" --sizes "$N" --device "$DEV" --modes none,async,async-proc --steps 200 \
        --profile-out "$R/profile" ;;
    *) echo "unknown stage $stage (see the header of $0)"; continue ;;
  esac > "$R/$stage.txt" 2> "$R/$stage.err"
  echo "   exit $? ; $(tail -n 12 "$R/$stage.txt")"
done
step done
