#!/bin/bash
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl
export PYTHONPATH=$PWD/.gpu/site:$PWD/src PYTHONUNBUFFERED=1 VECRAG_DEFAULT_ENCODER_PATH=$PWD/.gpu/model VECRAG="python3 -m vecrag.cli"
RET_ONLY=1 LVM_NCE="" EPOCHS=3 TRAIN_TIMEOUT=420 RET_RUNS="sync:mining.mode=sync kb:mining.mode=sync,mining.keep_back=true docmlp:mining.mode=sync,model.doc=mlp tfm:mining.mode=sync,model.kind=transformer,model.layers=2" bash scripts/gpu_quality.sh .gpu/work .gpu/p1/*.xz .gpu/p2/*.xz .gpu/p3/*.xz
echo QDONE
