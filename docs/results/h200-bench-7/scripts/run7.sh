#!/bin/bash
# session 7 GPU run A: block_topk (bca5373) vs the session-6 tree (46806fd), side by side on one machine
set -x
O=.gpu/out7; mkdir -p $O
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wfaiss/*.whl
git log --oneline -1; rm -rf /tmp/old; git worktree add -f /tmp/old 46806fd > /dev/null 2>&1 || git clone -q . /tmp/old && (cd /tmp/old && git checkout -q 46806fd)
export PYTHONUNBUFFERED=1
NEW=$PWD
for tree in new old; do
  d=$NEW; [ $tree = old ] && d=/tmp/old
  (cd $d && PYTHONPATH=$NEW/.gpu/site:$d/src python3 benchmarks/mining_step.py --size 1000000 --batch 256) > $O/mining-step-$tree.txt 2>&1
done
for r in 1 2 3; do
  for tree in new old; do
    d=$NEW; [ $tree = old ] && d=/tmp/old
    (cd $d && PYTHONPATH=$NEW/.gpu/site:$d/src python3 benchmarks/negatives_cost.py --size 1000000 --device cuda --steps 400 --batch 256 --modes none,sync,async --workdir $NEW/.gpu/nc) > $O/negcost-$tree-r$r.txt 2>&1
  done
done
echo ALLDONE > $O/done
