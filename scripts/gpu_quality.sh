#!/usr/bin/env bash
# Headline quality runs (wiki-full) on one GPU: ingest the corpus, train the retrievers and LVMs side by
# side on the one GPU (one of each by default; RET_LRS / LVM_NCE list more), then evaluate each on the TEST
# split against the full bank with every baseline, and run the cascade and the decoder on the best pair.
# Results land in WORK (logs, run dirs, eval JSON/text).
#
#   bash scripts/gpu_quality.sh WORK CORPUS...          e.g. WORK=.gpu/work CORPUS=part-0{1,2,3}.jsonl.xz
#
# Environment: VECRAG (command, default vecrag), DEVICE (cuda), EPOCHS (10), TRAIN_TIMEOUT (s, 1200; a run
# killed by it is evaluated from its best checkpoint), THREADS (torch threads per trainer, 6),
# RET_LRS (retriever learning rates, "2e-4"), LVM_NCE (LVM InfoNCE weights, "0.1"),
# MAX_SAMPLES (cascade/decode test samples, 10000), SKIP_TRAIN (1: evaluate existing runs only),
# INGEST_ARGS (extra ingest flags, e.g. --max-articles 40).
set -uo pipefail
W="$1"; shift
V="${VECRAG:-vecrag}"
DEV="${DEVICE:-cuda}"
EP="${EPOCHS:-10}"
TT="${TRAIN_TIMEOUT:-1200}"
TH="${THREADS:-6}"
RET_LRS="${RET_LRS:-2e-4}"   # one retriever per learning rate, trained side by side on the one GPU
LVM_NCE="${LVM_NCE:-0.1}"    # one LVM per InfoNCE weight
MS="${MAX_SAMPLES:-10000}"
BANK="$W/wiki-full"
mkdir -p "$W/runs" "$W/eval"
t0=$(date +%s)
stamp() { echo "== +$(( $(date +%s) - t0 ))s $*"; }

stamp "ingest"
if [ ! -f "$BANK/manifest.json" ]; then
  # shellcheck disable=SC2086
  $V ingest "$@" --out "$BANK" --device "$DEV" --batch-size 512 --lanes default --quiet ${INGEST_ARGS:-} || exit 1
fi
$V bank info "$BANK"

stamp "train: retrievers (lr $RET_LRS) + LVMs (nce $LVM_NCE) in parallel (epochs $EP, timeout ${TT}s each)"
SCHED="0-1:none;2-4:8@0.3-0.95;5-99:16@0.4-0.97"
ret() {  # name, extra overrides
  local name="$1"; shift
  timeout "$TT" $V train retriever "$BANK" --config retriever-gpu "train.epochs=$EP" "train.torch_threads=$TH" \
    train.device="$DEV" train.val_max_queries=5000 train.early_stop_metric=R@10 train.patience=3 \
    model.anchor=ewma model.alpha=0.5 mining.backend=torch "mining.schedule=$SCHED" "$@" \
    --out "$W/runs/$name" --quiet > "$W/$name.log" 2>&1
  echo "$name exit $?" >> "$W/train-status.txt"
}
lvm() {
  local name="$1"; shift
  timeout "$TT" $V train lvm "$BANK" --config lvm-gpu "train.epochs=$EP" "train.torch_threads=$TH" \
    train.device="$DEV" train.patience=3 "$@" --out "$W/runs/$name" --quiet > "$W/$name.log" 2>&1
  echo "$name exit $?" >> "$W/train-status.txt"
}
if [ -z "${SKIP_TRAIN:-}" ]; then
$V eval baselines "$BANK" --split test --context 10 --backend torch --device "$DEV" --quiet \
  --out "$W/eval/baselines-test.json" > "$W/eval/baselines-test.txt" 2>&1 &
for lr in $RET_LRS; do ret "ret-lr$lr" "train.lr=$lr" & done
for w in $LVM_NCE; do lvm "lvm-nce$w" "loss.w_nce=$w" & done
wait
fi
cat "$W/train-status.txt" "$W/eval/baselines-test.txt"

stamp "eval retrievers (test split, full bank, all baselines incl. BM25 and encoder-on-text)"
text=--text-baselines  # BM25 and encoder-on-text once, beside the first retriever
for lr in $RET_LRS; do
  $V eval retriever "$W/runs/ret-lr$lr" --split test --backend torch --device "$DEV" $text --quiet \
    | tee "$W/eval/retriever-lr$lr.txt"
  text=
done

stamp "eval LVMs (test split, rollout 5)"
for w in $LVM_NCE; do
  $V eval lvm "$W/runs/lvm-nce$w" --split test --horizon 5 --device "$DEV" --quiet | tee "$W/eval/lvm-nce$w.txt"
done

# the pair for cascade/decode: the retriever and the LVM with the best validation score
best() {  # prefix metric -> run name with the highest val value of metric in runs/*/log.jsonl
  python3 - "$W/runs" "$1" "$2" <<'EOF'
import json, sys
from pathlib import Path
runs, prefix, metric = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
scores = {}
for d in sorted(runs.glob(prefix + "*")):
    for line in (d / "log.jsonl").read_text().splitlines() if (d / "log.jsonl").exists() else []:
        r = json.loads(line)
        if r.get("kind") == "val" and metric in r:
            scores[d.name] = max(scores.get(d.name, float("-inf")), r[metric])
print(max(scores, key=scores.get) if scores else sorted(p.name for p in runs.glob(prefix + "*"))[0])
EOF
}
R=$(best ret R@10); L=$(best lvm cos)
stamp "cascade + decode with retriever $R and LVM $L on $MS test samples"
$V eval cascade "$BANK" --lvm "$W/runs/$L" --retriever "$W/runs/$R" --split test --backend torch --device "$DEV" \
  --max-samples "$MS" --out "$W/eval" --quiet | tee "$W/eval/cascade.txt"
for p in conservative neutral creative; do
  $V eval decode "$BANK" --lvm "$W/runs/$L" --retriever "$W/runs/$R" --split test --backend torch \
    --device "$DEV" --profile "$p" --max-samples "$MS" --out "$W/eval" --quiet | tee "$W/eval/decode-$p.txt"
done
stamp "done"
