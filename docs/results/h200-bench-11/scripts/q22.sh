#!/bin/bash
# session 11, lease 3: wiki-3k (DESIGN.md 5b: the first 3,000 articles of part-01), four retrievers side by side for
# 5 epochs on one H200: retriever-gpu as shipped (tau 0.03), the same at tau 0.05, no mining, the GRU variant.
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1 VECRAG_DEFAULT_ENCODER_PATH=$PWD/.gpu/model VECRAG="python3 -m vecrag.cli"
export PYTHONPATH=$PWD/.gpu/site:$PWD/src
W=.gpu/w3k; mkdir -p $W
BANK_NAME=wiki-3k INGEST_ARGS="--max-articles 3000" RET_ONLY=1 LVM_NCE="" EPOCHS=5 TRAIN_TIMEOUT=200 \
  RET_RUNS="tfm:train.seed=0 tau5:loss.tau=0.05 none:mining.mode=none gru:model.kind=gru,model.layers=1" \
  bash scripts/gpu_quality.sh $W .gpu/p1/*.xz
echo QDONE
