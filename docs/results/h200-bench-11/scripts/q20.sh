#!/bin/bash
# session 11, lease 2: wiki-full, 5 epochs, four retrievers side by side on one H200: retriever-gpu as shipped
# (transformer, miner process, CUDA graphs auto), sync mining (graphs auto), and two quality variants of the
# shipped run: InfoNCE temperature 0.03 (vs 0.05), 32 mined negatives in the late phase (vs 16).
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1 VECRAG_DEFAULT_ENCODER_PATH=$PWD/.gpu/model VECRAG="python3 -m vecrag.cli"
export PYTHONPATH=$PWD/.gpu/site:$PWD/src
W=.gpu/work; mkdir -p $W
RET_ONLY=1 LVM_NCE="" EPOCHS=5 TRAIN_TIMEOUT=480 RET_RUNS="tfm:train.seed=0 sync:mining.mode=sync tau3:loss.tau=0.03 neg32:mining.schedule=0-0:none;1-1:8@0.3-0.95;2-99:32@0.3-0.97" bash scripts/gpu_quality.sh $W .gpu/p1/*.xz .gpu/p2/*.xz .gpu/p3/*.xz
echo QDONE
