#!/bin/bash
# session 11, lease 2, right after q20.sh on the same machine: three more variants on q20's bank (linked into
# .gpu/work2), same script and epochs: tau 0.02, tau 0.03 with seed 1, tau 0.03 with 32 mined negatives.
mkdir -p .gpu/work2 && ln -sfn $PWD/.gpu/work/wiki-full .gpu/work2/wiki-full
export PYTHONUNBUFFERED=1 VECRAG_DEFAULT_ENCODER_PATH=$PWD/.gpu/model VECRAG="python3 -m vecrag.cli" PYTHONPATH=$PWD/.gpu/site:$PWD/src
RET_ONLY=1 LVM_NCE="" EPOCHS=5 TRAIN_TIMEOUT=420 RET_RUNS="tau2:loss.tau=0.02 tau3s1:loss.tau=0.03,train.seed=1 tau3n32:loss.tau=0.03,mining.schedule=0-0:none;1-1:8@0.3-0.95;2-99:32@0.3-0.97" bash scripts/gpu_quality.sh .gpu/work2 x
echo QDONE
