#!/bin/bash
# session 9: the async share with retriever-gpu's transformer tower, then four retrievers on wiki-full (5 epochs,
# retriever-gpu as shipped: async process mining): transformer and GRU, seeds 0 and 1; GPU memory by process.
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl
export PYTHONPATH=$PWD/.gpu/site:$PWD/src PYTHONUNBUFFERED=1 VECRAG_DEFAULT_ENCODER_PATH=$PWD/.gpu/model VECRAG="python3 -m vecrag.cli"
W=.gpu/work; mkdir -p $W/eval
( while true; do
    t=$(date +%s)
    nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | while IFS=', ' read -r pid mem; do
      echo "$t $pid ${mem}MiB $(ps -o args= -p "$pid" 2>/dev/null | cut -c1-160)"; done
    sleep 15; done ) >> $W/gpumem.log 2>&1 &
MON=$!
echo "== $(date +%s) negcost transformer"
python3 benchmarks/negatives_cost.py --size 1000000 --device cuda --steps 400 --batch 256 --repeats 3 --modes none,async,async-proc --tower transformer --workdir .gpu/nc > $W/negcost-tfm.txt 2>&1
echo "== $(date +%s) negcost gru"
python3 benchmarks/negatives_cost.py --size 1000000 --device cuda --steps 400 --batch 256 --repeats 2 --modes none,async,async-proc --tower gru --workdir .gpu/nc > $W/negcost-gru.txt 2>&1
rm -rf .gpu/nc
echo "== $(date +%s) quality"
RET_ONLY=1 LVM_NCE="" EPOCHS=5 TRAIN_TIMEOUT=500 RET_RUNS="tfm:train.seed=0 gru:model.kind=gru,model.layers=1 tfm1:train.seed=1 gru1:model.kind=gru,model.layers=1,train.seed=1" bash scripts/gpu_quality.sh $W .gpu/p1/*.xz .gpu/p2/*.xz .gpu/p3/*.xz
kill $MON
echo QDONE
