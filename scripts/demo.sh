#!/usr/bin/env bash
# The whole vecrag pipeline on a small slice of the default corpus, on a CPU, in a few minutes.
# Called by `make demo` (which creates .venv and installs first). Environment:
#   CORPUS    corpus file(s) or glob (default ../shared/data/enwiki2015/part-01.jsonl.xz)
#   ARTICLES  how many articles to ingest (default 150: 11,749 chunks; ARTICLES=300 is the larger demo, 19,763
#             chunks: about 40 s more of ingest with bf16, and longer training)
#   SPLIT, SPLIT_SEED  the article split (default 0.8,0.1,0.1 with seed 25: 23 test articles at 150 articles,
#             where seed 0 would hold out only 5 short ones)
#   MAX_QUERIES  a deterministic subset of test (and val) positions each evaluation scores (default 500; 0 = all)
#   DEMO_OUT  where everything goes (default demo_out)
#   VECRAG    the vecrag command (default: vecrag on PATH)
set -euo pipefail
CORPUS="${CORPUS:-../shared/data/enwiki2015/part-01.jsonl.xz}"
ARTICLES="${ARTICLES:-150}"
SPLIT="${SPLIT:-0.8,0.1,0.1}"
SPLIT_SEED="${SPLIT_SEED:-25}"
MAX_QUERIES="${MAX_QUERIES:-500}"
OUT="${DEMO_OUT:-demo_out}"
VECRAG="${VECRAG:-vecrag}"
BANK="$OUT/wiki-$ARTICLES"   # the bank is named after the slice: tables print "bank wiki-150"
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1
# bfloat16 autocast for the encoder where the CPU has it natively (AMX / AVX512-BF16), fp32 elsewhere: ingest
# about 2.2x faster, vectors within cosine 0.9999 of fp32 (vecrag.bank.encode); VECRAG_ENCODER_PRECISION=fp32
# for the exact fp32 bank
export VECRAG_ENCODER_PRECISION="${VECRAG_ENCODER_PRECISION:-auto}"

# Each step's wall time is recorded and printed at the end (and written to $OUT/stage-times.txt).
STAGE=""; STAGE_T0=0; TIMES=()
end_stage() {
  if [ -n "$STAGE" ]; then TIMES+=("$(printf '%6ds  %s' $(( $(date +%s) - STAGE_T0 )) "$STAGE")"); fi
  STAGE=""
}
step() {
  end_stage; STAGE="${1%% (*}"; STAGE_T0=$(date +%s)
  printf '\n\033[1m==> %s\033[0m\n' "$*"
}

# shellcheck disable=SC2086
if ! compgen -G "$CORPUS" > /dev/null && [ ! -e "$CORPUS" ]; then
  if [ -z "${HF_DATASET:-}" ] && python3 -c "import datasets" 2>/dev/null; then
    echo "note: $CORPUS not found; using a Hugging Face Wikipedia sample (needs a network)"
    CORPUS="hf:wikimedia/wikipedia:20231101.en:train"
  else
    cat >&2 <<EOF
vecrag demo: the corpus '$CORPUS' was not found.
  This demo's default corpus ships beside the repository in ../shared/data/. On your own machine, point
  CORPUS at any supported source, for example:
    make demo CORPUS=/data/enwiki/part-01.jsonl.xz          # JSONL with title/text (optionally .xz/.gz/.bz2)
    make demo CORPUS='/data/wikitext/*.tokens'              # WikiText-103 token files
    make demo CORPUS=/data/enwiki-latest-pages-articles.xml.bz2  # MediaWiki XML dump
    make demo CORPUS=/data/my_docs/                         # a folder of .txt/.md files
  or install 'datasets' (pip install datasets) with a network to use a Hugging Face Wikipedia sample.
EOF
    exit 2
  fi
fi

# the evaluations score the same deterministic subset of positions (make_samples' seed 0) in every table
SUBSET_Q=(); SUBSET_S=()
if [ "$MAX_QUERIES" -gt 0 ]; then SUBSET_Q=(--max-queries "$MAX_QUERIES"); SUBSET_S=(--max-samples "$MAX_QUERIES"); fi

mkdir -p "$OUT"
# A rerun keeps the bank (the expensive part) and redoes everything after it from scratch.
rm -rf "$OUT/runs" "$OUT/eval" "$OUT"/report-* "$OUT/generate-telemetry.jsonl" "$OUT/baselines-test.json"
start=$(date +%s)

step "1. ingest the first $ARTICLES articles of $CORPUS (resumable: rerun after a kill continues)"
if [ -f "$BANK/manifest.json" ]; then
  echo "bank already built at $BANK (delete it to rebuild)"
else
  $VECRAG ingest $CORPUS --out "$BANK" --max-articles "$ARTICLES" --lanes default --split "$SPLIT" \
    --split-seed "$SPLIT_SEED"
fi
$VECRAG bank info "$BANK"

step "2. FAISS index (auto: flat below 200k vectors)"
$VECRAG index "$BANK" --type auto

step "3. the baselines every model must beat (test split, full bank)"
$VECRAG eval baselines "$BANK" --split test --context 10 "${SUBSET_Q[@]}" --out "$OUT/baselines-test.json"

step "4. search the bank with a text"
$VECRAG search "$BANK" "the history of the Roman Empire" -k 5

step "5. train a small LVM (next-chunk-vector model) and evaluate it against copy-last / mean / ewma / ridge"
# KEY=VALUE overrides override the YAML preset (they may also follow the options)
$VECRAG train lvm "$BANK" train.epochs=3 --config lvm-default --out "$OUT/runs/lvm" --quiet
$VECRAG eval lvm "$OUT/runs/lvm" --split test --horizon 3 "${SUBSET_Q[@]}"

step "6. train a small two-tower retriever (sync mining, curriculum) and evaluate it against the baselines"
# anchored on the best heuristic (ewma 0.5 on this slice): the tower starts at its recall and learns a correction
$VECRAG train retriever "$BANK" train.epochs=3 model.anchor=ewma model.alpha=0.5 --config retriever-default \
  --out "$OUT/runs/retriever" --quiet
$VECRAG eval retriever "$OUT/runs/retriever" --split test "${SUBSET_Q[@]}"

step "7. calibrate decoding on VAL, then the cascade, the decoder and generation rollouts on held-out articles"
# the profiles state an intent (SNAP precision, NOVEL share); calibrate measures what it means for these models
# (it writes $OUT/runs/lvm/calibration.json). The decoding evals go to the LVM run's metrics/ (their default),
# where the dashboard and `vecrag report` read them.
$VECRAG calibrate "$BANK" --lvm "$OUT/runs/lvm" --retriever "$OUT/runs/retriever" "${SUBSET_S[@]}" --quiet
$VECRAG eval cascade "$BANK" --lvm "$OUT/runs/lvm" --retriever "$OUT/runs/retriever" --split test \
  "${SUBSET_S[@]}" --out "$OUT/runs/lvm/metrics" --quiet
$VECRAG eval decode "$BANK" --lvm "$OUT/runs/lvm" --retriever "$OUT/runs/retriever" --split test \
  "${SUBSET_S[@]}" --profile neutral --out "$OUT/runs/lvm/metrics" --quiet
# rollouts: prompt = a test article's first 3 chunks, 8 steps; the decoder beside greedy baselines and the truth
$VECRAG eval generate "$BANK" --lvm "$OUT/runs/lvm" --retriever "$OUT/runs/retriever" --split test \
  --profile neutral --profile conservative --profile creative --out "$OUT/runs/lvm/metrics" --quiet

step "8. generate 5 steps from a prompt"
# one telemetry line per step, in the LVM run: the dashboard's decoding view reads it
$VECRAG generate "$BANK" --lvm "$OUT/runs/lvm" --retriever "$OUT/runs/retriever" --steps 5 \
  --prompt "Alabama is a state in the southeastern region of the United States. It became a state in 1819." \
  --telemetry "$OUT/runs/lvm/decode.jsonl"

step "9. static reports"
$VECRAG report "$OUT/runs/retriever" --out "$OUT/report-retriever"
$VECRAG report "$OUT/runs/lvm" --out "$OUT/report-lvm"

end_stage
took=$(( $(date +%s) - start ))
{ echo "wall time per stage:"; printf '%s\n' "${TIMES[@]}"; printf '%6ds  total\n' "$took"; } | tee "$OUT/stage-times.txt"
cat <<EOF

vecrag demo finished in ${took}s. Results:
  bank               $BANK               (vecrag bank info $BANK)
  baselines          $OUT/baselines-test.json
  LVM run            $OUT/runs/lvm        (metrics in $OUT/runs/lvm/metrics/)
  retriever run      $OUT/runs/retriever  (metrics in $OUT/runs/retriever/metrics/)
  calibration        $OUT/runs/lvm/calibration.json (vecrag calibrate: thresholds and weights from VAL)
  cascade / decode   $OUT/runs/lvm/metrics/ (cascade_eval-test.json, decode_eval-test-neutral.json,
                     decode_sweep-test-neutral.txt/.png)
  rollouts           $OUT/runs/lvm/metrics/generate_eval-test.json (vecrag eval generate)
  telemetry          $OUT/runs/lvm/decode.jsonl (vecrag generate --telemetry: one line per step)
  stage wall times   $OUT/stage-times.txt
  reports            $OUT/report-retriever/report.html  $OUT/report-lvm/report.html
  dashboard          $VECRAG serve $BANK --lvm $OUT/runs/lvm --retriever $OUT/runs/retriever --runs $OUT/runs
                     then open http://127.0.0.1:8080/ (the decoding views: run lvm)
EOF
