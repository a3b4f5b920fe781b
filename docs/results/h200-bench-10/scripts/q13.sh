#!/bin/bash
# session 10, lease 1: CUDA-graph mining: CUDA tests, then the async share with and without graphs (transformer)
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl
export PYTHONPATH=$PWD/.gpu/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"
python3 -m pytest -q -p no:cacheprovider tests/test_miners.py -k "cuda or graph" 2>&1 | tail -6
python3 benchmarks/negatives_cost.py --size 1000000 --device cuda --steps 400 --batch 256 --repeats 4 --modes none,async,async-nog,async-proc,async-proc-nog --tower transformer --workdir .gpu/nc 2>&1 | tail -9
