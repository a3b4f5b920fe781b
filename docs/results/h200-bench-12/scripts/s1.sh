#!/bin/bash
# session 12, call 2 (call 1 only carried the encoder): the CUDA tests on the tree, then the miner process's
# start-up side by side: this tree (one warm-up job in the child before "ready") vs ed06913 (none, in .gpu/old12),
# none + async-proc, transformer tower, 1M random bank, two interleaved rounds each.
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1
S=$PWD/.gpu/site
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
PYTHONPATH=$S:$PWD/src python3 -m pytest -q -p no:cacheprovider tests/test_miners.py tests/test_topk.py tests/test_lvm.py tests/test_retriever.py -k "cuda or graph or topk or process_worker" 2>&1 | tail -4
PYTHONPATH=$S:$PWD/src python3 -m pytest -q -p no:cacheprovider tests/test_miners.py 2>&1 | tail -2
NC="--size 1000000 --device cuda --steps 400 --batch 256 --repeats 1 --modes none,async-proc --tower transformer --workdir .gpu/nc"
for r in 1 2; do
  echo "== round $r: this tree (warm-up)"; PYTHONPATH=$S:$PWD/src python3 benchmarks/negatives_cost.py $NC 2>&1 | tail -4
  echo "== round $r: ed06913 (no warm-up)"; PYTHONPATH=$S:$PWD/.gpu/old12/src python3 .gpu/old12/benchmarks/negatives_cost.py $NC 2>&1 | tail -4
done
echo QDONE
