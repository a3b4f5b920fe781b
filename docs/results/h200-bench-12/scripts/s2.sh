#!/bin/bash
# session 12, call 3: wiki-full, 5 epochs, four retrievers side by side on one H200: retriever-gpu as shipped
# (transformer, tau 0.03, miner process, CUDA graphs auto, warm-up), the same with cuda_graph=off (the miner's job
# time and the trainers' waits, graphs vs eager at scale), and context lengths 32 and 100 (vs 10; each evaluated
# against the baselines re-measured at its own context length).
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1 VECRAG_DEFAULT_ENCODER_PATH=$PWD/.gpu/model VECRAG="python3 -m vecrag.cli"
export PYTHONPATH=$PWD/.gpu/site:$PWD/src
W=.gpu/work; mkdir -p $W
RET_ONLY=1 LVM_NCE="" EPOCHS=5 TRAIN_TIMEOUT=480 RET_RUNS="tfm:train.seed=0 nog:mining.cuda_graph=off L32:train.context=32 L100:train.context=100" bash scripts/gpu_quality.sh $W .gpu/p1/*.xz .gpu/p2/*.xz .gpu/p3/*.xz
echo QDONE
