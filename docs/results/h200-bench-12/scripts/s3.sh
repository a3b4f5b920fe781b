#!/bin/bash
# session 12, a second lease: the CUDA tests on the final tree (the warm-up test fixed on the CPU after s1.sh)
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl 2>/dev/null
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/.gpu/site:$PWD/src
git log --oneline -1 2>/dev/null || true
python3 -m pytest -q -p no:cacheprovider tests/test_miners.py tests/test_topk.py tests/test_lvm.py tests/test_retriever.py -k "cuda or graph or topk or process_worker" 2>&1 | tail -4
python3 -m pytest -q -p no:cacheprovider tests/test_miners.py tests/test_towers.py 2>&1 | tail -2
