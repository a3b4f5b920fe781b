#!/bin/bash
# session 9, lease 4: CUDA miner tests and the async share with the transformer tower after the lock change
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl
export PYTHONPATH=$PWD/.gpu/site:$PWD/src PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_miners.py -k "cuda or refresh or process" 2>&1 | tail -2
python3 benchmarks/negatives_cost.py --size 1000000 --device cuda --steps 400 --batch 256 --repeats 2 --modes none,async,async-proc --tower transformer --workdir .gpu/nc 2>&1 | tail -5
