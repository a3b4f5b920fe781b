#!/bin/bash
# session 10, lease 1 (3rd call): sync mining with and without graphs; thread and process again (transformer)
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl 2>/dev/null
export PYTHONPATH=$PWD/.gpu/site:$PWD/src PYTHONUNBUFFERED=1
python3 benchmarks/negatives_cost.py --size 1000000 --device cuda --steps 400 --batch 256 --repeats 3 --modes none,sync,sync-nog,async,async-nog,async-proc,async-proc-nog --tower transformer --workdir .gpu/nc 2>&1 | tail -11
