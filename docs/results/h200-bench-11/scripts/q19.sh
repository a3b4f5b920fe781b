#!/bin/bash
# session 11, call 4: the CUDA tests again after the fixes (release_rng, the seeded test), and whether a capture
# in one thread breaks another thread's dropout (the reason for the thread + on + dropout config check)
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl .gpu/wfaiss/*.whl 2>/dev/null
export PYTHONPATH=$PWD/.gpu/site:$PWD/src PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_miners.py tests/test_topk.py tests/test_lvm.py tests/test_retriever.py -k "cuda or graph or topk or process_worker_mines_what" 2>&1 | tail -4
python3 -m pytest -q -p no:cacheprovider tests/test_miners.py 2>&1 | tail -2
python3 docs/results/h200-bench-11/scripts/rng_race.py
