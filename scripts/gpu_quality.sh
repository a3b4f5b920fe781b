#!/usr/bin/env bash
# Headline quality runs (wiki-full) on one GPU: ingest the corpus (one ingest per SOURCE in parallel, then
# `bank merge`), train one retriever per mining mode and the LVMs side by side on the one GPU, then evaluate
# each on the TEST split against the full bank with every baseline; with the best pair, calibrate decoding on VAL,
# then run the cascade, the decoder and generation rollouts on TEST. Results land in WORK (logs, run dirs, eval
# JSON/text).
#
#   bash scripts/gpu_quality.sh WORK CORPUS...          e.g. WORK=.gpu/work CORPUS=part-0{1,2,3}.jsonl.xz
#
# Environment: VECRAG (command, default vecrag), DEVICE (cuda), EPOCHS (4), TRAIN_TIMEOUT (s, 600; a run
# killed by it is evaluated from its best checkpoint), THREADS (torch threads per trainer, 3),
# RET_RUNS (one retriever per NAME:OVERRIDE[,OVERRIDE...] item, default "none:mining.mode=none
# sync:mining.mode=sync async:mining.mode=async": the no-mining run is the control and the samples/s of the
# three, trained side by side, are the cost of mining; e.g. RET_RUNS="sync:mining.mode=sync
# k256:mining.mode=sync,mining.k=256 rel0:mining.mode=sync,mining.rel=0"), RET_ARGS (overrides for every
# retriever, e.g. "train.lr=1e-4"), SCHED (curriculum), LVM_NCE (LVM InfoNCE weights, "0.1"),
# MAX_SAMPLES (cascade/decode test samples, 10000), GEN_ARTICLES (test articles rolled out by eval generate, 300;
# 0 = all), CAL_ARTICLES (VAL articles rolled out by calibrate at each grid point, GEN_ARTICLES), TRAIN_ARGS (overrides for every trainer), SKIP_TRAIN (1: evaluate existing runs only),
# INGEST_ARGS (extra ingest flags, e.g. --max-articles 40), RET_ONLY (1: retrievers only: no LVM, cascade or
# decode; with LVM_NCE=""), BANK_NAME (the bank directory under WORK, wiki-full).
# At the end WORK/results.tgz holds what to bring back from the GPU machine (a few hundred KB: logs, eval tables,
# each run's log.jsonl, metrics and config); WORK itself also holds the banks and checkpoints (GBs).
set -uo pipefail
W="$1"; shift
V="${VECRAG:-vecrag}"
DEV="${DEVICE:-cuda}"
EP="${EPOCHS:-4}"
TT="${TRAIN_TIMEOUT:-600}"
TH="${THREADS:-3}"
RET_RUNS="${RET_RUNS:-none:mining.mode=none sync:mining.mode=sync async:mining.mode=async}"
RET_NAMES=$(for r in $RET_RUNS; do printf '%s ' "${r%%:*}"; done)
RET_ARGS="${RET_ARGS:-train.lr=2e-4}"
SCHED="${SCHED:-0-0:none;1-1:8@0.3-0.95;2-99:16@0.3-0.97}"
LVM_NCE="${LVM_NCE-0.1}"    # one LVM per InfoNCE weight
MS="${MAX_SAMPLES:-10000}"
GEN="${GEN_ARTICLES:-300}"   # test articles rolled out (a seeded sample; 0 = all)
CAL="${CAL_ARTICLES:-$GEN}"  # VAL articles rolled out by calibrate at each of its grid points
TRAIN_ARGS="${TRAIN_ARGS:-}" # overrides for every trainer, e.g. "train.cuda_graph=off"
BANK="$W/${BANK_NAME:-wiki-full}"
mkdir -p "$W/runs" "$W/eval"
t0=$(date +%s)
stamp() { echo "== +$(( $(date +%s) - t0 ))s $*"; }
pack() {  # the small files of WORK into WORK/results.tgz (no banks, shards or checkpoints)
  (cd "$W" && tar czf results.tgz --ignore-failed-read eval ./*.log ./*.txt runs/*/log.jsonl runs/*/metrics \
    runs/*/config.yaml 2>/dev/null)
  stamp "packed $W/results.tgz ($(du -h "$W/results.tgz" | cut -f1)): logs, eval tables, run records"
}

stamp "ingest"
if [ ! -f "$BANK/manifest.json" ]; then
  # one ingest per source, in parallel: one process reads, cleans, splits and tokenizes at ~1.4k chunks/s
  # (the GPU was 12 % busy with one), then one streamed merge (article ids are Wikipedia page ids: kept)
  i=0; parts=()
  for src in "$@"; do
    i=$((i + 1)); parts+=("$W/parts/p$i")
    # shellcheck disable=SC2086
    $V ingest "$src" --out "$W/parts/p$i" --device "$DEV" --batch-size 512 --lanes default --quiet \
      ${INGEST_ARGS:-} > "$W/ingest-p$i.log" 2>&1 &
  done
  wait
  for p in "${parts[@]}"; do [ -f "$p/manifest.json" ] || { echo "ingest of $p failed:"; tail -5 "$p.log" "$W/ingest-"*.log; exit 1; }; done
  tail -qn1 "$W"/ingest-p*.log
  if [ "$i" -gt 1 ]; then
    $V bank merge "${parts[@]}" --out "$BANK" || exit 1
  else
    mv "${parts[0]}" "$BANK"
  fi
fi
$V bank info "$BANK"

stamp "train: retrievers ($RET_RUNS) + LVMs (nce $LVM_NCE) in parallel (epochs $EP, timeout ${TT}s each)"
ret() {  # name, extra overrides
  local name="$1"; shift
  timeout "$TT" $V train retriever "$BANK" --config retriever-gpu "train.epochs=$EP" "train.torch_threads=$TH" \
    train.device="$DEV" train.val_max_queries=0 train.early_stop_metric=R@10 train.patience=3 \
    model.anchor=ewma model.alpha=0.5 mining.backend=torch "mining.schedule=$SCHED" $RET_ARGS $TRAIN_ARGS "$@" \
    --out "$W/runs/$name" --quiet > "$W/$name.log" 2>&1
  echo "$name exit $?" >> "$W/train-status.txt"
}
lvm() {
  local name="$1"; shift
  timeout "$TT" $V train lvm "$BANK" --config lvm-gpu "train.epochs=$EP" "train.torch_threads=$TH" \
    train.device="$DEV" train.patience=3 $TRAIN_ARGS "$@" --out "$W/runs/$name" --quiet > "$W/$name.log" 2>&1
  echo "$name exit $?" >> "$W/train-status.txt"
}
if [ -z "${SKIP_TRAIN:-}" ]; then
$V eval baselines "$BANK" --split test --context 10 --backend torch --device "$DEV" --quiet \
  --out "$W/eval/baselines-test.json" > "$W/eval/baselines-test.txt" 2>&1 &
for r in $RET_RUNS; do
  IFS=, read -ra ov <<< "${r#*:}"
  ret "ret-${r%%:*}" "${ov[@]}" &
done
for w in $LVM_NCE; do lvm "lvm-nce$w" "loss.w_nce=$w" & done
wait
fi
cat "$W/train-status.txt" "$W/eval/baselines-test.txt"

# BM25 and encoder-on-text ran above (eval baselines, same bank, split and queries) while the GPU trained
stamp "eval retrievers (test split, full bank, every vector baseline re-measured beside each tower)"
for m in $RET_NAMES; do
  $V eval retriever "$W/runs/ret-$m" --split test --backend torch --device "$DEV" --quiet \
    | tee "$W/eval/retriever-$m.txt"
done
# training speed of each mining mode, side by side on the same GPU and bank (median of the train records)
python3 - "$W/runs" $RET_NAMES <<'EOF'
import json, statistics, sys
from pathlib import Path
for m in sys.argv[2:]:
    f = Path(sys.argv[1]) / f"ret-{m}" / "log.jsonl"
    recs = [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else []
    tr = [r for r in recs if r.get("kind") == "train"]
    tr = [r for r in tr if r.get("epoch", 0) >= 1] or tr  # the epochs that mine (epoch 0 does not)
    sps = statistics.median(r["samples_per_s"] for r in tr) if tr else float("nan")
    last = tr[-1] if tr else {}
    print(f"ret-{m}: median samples/s (epochs >= 1) {sps:,.0f}; miner hits {last.get('miner_hits', 0):.0f} "
          f"stale {last.get('miner_stale', 0):.0f} misses {last.get('miner_misses', 0):.0f} "
          f"fallbacks {last.get('miner_fallbacks', 0):.0f}; sync-mined batches {last.get('mining_mined_sync', 0):.0f}; "
          f"miner job {last.get('miner_job_ms', float('nan')):.1f} ms, trainer's wait {last.get('miner_wait_ms', 0) / 1e3:.1f} s "
          f"in all, graph jobs {last.get('miner_graph_jobs', last.get('mining_mined_sync_graph', 0)):.0f}")
EOF

if [ -n "${RET_ONLY:-}" ]; then pack; stamp "done (RET_ONLY)"; exit 0; fi
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
stamp "calibrate decoding on VAL with retriever $R and LVM $L (fusion weights, thresholds, rollout settings)"
$V calibrate "$BANK" --lvm "$W/runs/$L" --retriever "$W/runs/$R" --backend torch --device "$DEV" \
  --max-samples "$MS" --max-articles "$CAL" --quiet | tee "$W/eval/calibrate.txt"
stamp "cascade (calibrated weights beside the first stage), decode and rollouts on TEST"
$V eval cascade "$BANK" --lvm "$W/runs/$L" --retriever "$W/runs/$R" --split test --backend torch --device "$DEV" \
  --max-samples "$MS" --out "$W/eval" --quiet | tee "$W/eval/cascade-test.txt"
for p in conservative neutral creative; do
  $V eval decode "$BANK" --lvm "$W/runs/$L" --retriever "$W/runs/$R" --split test --backend torch \
    --device "$DEV" --profile "$p" --max-samples "$MS" --out "$W/eval" --quiet | tee "$W/eval/decode-$p.txt"
done
$V eval generate "$BANK" --lvm "$W/runs/$L" --retriever "$W/runs/$R" --split test --backend torch --device "$DEV" \
  --profile neutral --profile conservative --profile creative --max-articles "$GEN" --out "$W/eval" --quiet \
  | tee "$W/eval/generate-test.txt"
pack
stamp "done"
