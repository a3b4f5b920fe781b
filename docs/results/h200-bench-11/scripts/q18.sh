#!/bin/bash
# session 11, call 1: the CUDA tests on the tree, then the async share (transformer tower, 1M random bank):
# none, sync (graphs auto / off), miner thread (auto = eager / graphs on), miner process (auto = graphs / off)
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl 2>/dev/null
export PYTHONPATH=$PWD/.gpu/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
git log --oneline -1 2>/dev/null || true
python3 -m pytest -q -p no:cacheprovider tests/test_miners.py tests/test_topk.py tests/test_lvm.py tests/test_retriever.py -k "cuda or graph or topk or process_worker_mines_what" 2>&1 | tail -4
python3 benchmarks/negatives_cost.py --size 1000000 --device cuda --steps 400 --batch 256 --repeats ${REPEATS:-2} \
  --modes none,sync,sync-nog,async,async-gon,async-proc,async-proc-nog --tower transformer --workdir .gpu/nc 2>&1 | tail -12
