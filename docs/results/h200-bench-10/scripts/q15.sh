#!/bin/bash
# session 10, lease 2: wiki-full, 3 epochs, retriever-gpu (transformer): CUDA graphs on (auto) vs off, for the
# process miner (the preset's) and sync mining, four runs side by side on one H200.
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl
export PYTHONUNBUFFERED=1 VECRAG_DEFAULT_ENCODER_PATH=$PWD/.gpu/model VECRAG="python3 -m vecrag.cli"
export PYTHONPATH=$PWD/.gpu/site:$PWD/src
W=.gpu/work; mkdir -p $W
RET_ONLY=1 LVM_NCE="" EPOCHS=3 TRAIN_TIMEOUT=330 RET_RUNS="proc:train.seed=0 procnog:mining.cuda_graph=off sync:mining.mode=sync syncnog:mining.mode=sync,mining.cuda_graph=off" bash scripts/gpu_quality.sh $W .gpu/p1/*.xz .gpu/p2/*.xz .gpu/p3/*.xz
echo QDONE
