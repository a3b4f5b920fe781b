#!/bin/bash
export PYTHONPATH=$PWD/.gpu/site:$PWD/src PYTHONUNBUFFERED=1 VECRAG_DEFAULT_ENCODER_PATH=$PWD/.gpu/model VECRAG="python3 -m vecrag.cli"
RET_ONLY=1 LVM_NCE="" EPOCHS=5 TRAIN_TIMEOUT=330 THREADS=6 RET_RUNS="tfm2e5:mining.mode=sync,model.kind=transformer,model.layers=2 tfm4e5:mining.mode=sync,model.kind=transformer,model.layers=4" bash scripts/gpu_quality.sh .gpu/work .gpu/p1/*.xz .gpu/p2/*.xz .gpu/p3/*.xz
echo QDONE
