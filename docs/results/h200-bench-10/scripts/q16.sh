#!/bin/bash
# session 10, lease 3: retriever-gpu (transformer) on wiki-300 (make demo's bank, 20k chunks), 8 epochs, four runs
# side by side: CUDA graphs auto vs off, for the process miner (the preset's) and for sync mining.
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/.gpu/site:$PWD/src
R=.gpu/r16; rm -rf $R; mkdir -p $R
python3 -m pytest -q -p no:cacheprovider tests/test_miners.py -k "cuda or graph" 2>&1 | tail -2
S="0-0:none;1-2:8@0.3-0.95;3-99:16@0.3-0.97"
run() { name=$1; shift; python3 -m vecrag.cli train retriever .gpu/w300 --config retriever-gpu train.epochs=8 \
  train.torch_threads=3 train.device=cuda train.val_max_queries=0 train.early_stop_metric=R@10 train.patience=10 \
  model.anchor=ewma model.alpha=0.5 mining.backend=torch val_backend=torch "mining.schedule=$S" train.lr=2e-4 "$@" \
  --out $R/$name > $R/$name.log 2>&1; echo "$name exit $?" >> $R/status; }
run proc & run procnog mining.cuda_graph=off & run sync mining.mode=sync & run syncnog mining.mode=sync mining.cuda_graph=off &
wait
cat $R/status
python3 .gpu/sum16.py
grep -il "capture failed\|without CUDA graphs\|Traceback" $R/*.log || echo "no capture failure or traceback in any log"
