#!/bin/bash
export PYTHONPATH=$PWD/.gpu/site:$PWD/src PYTHONUNBUFFERED=1
python3 benchmarks/negatives_cost.py --size 1000000 --device cuda --steps 400 --batch 256 --repeats 3 --modes none,async,async-proc --workdir .gpu/nc
echo TDONE
