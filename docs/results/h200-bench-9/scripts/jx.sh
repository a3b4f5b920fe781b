#!/bin/bash
# is JAX's GPU reservation gone with `import vecrag`? bm25s imported after vecrag, then with the old default forced
mkdir -p .gpu/site && python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/wsmall/*.whl
export PYTHONPATH=$PWD/.gpu/site:$PWD/src
probe='import os, subprocess, time, vecrag, bm25s
time.sleep(1)
out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"], capture_output=True, text=True).stdout
mine = [l for l in out.splitlines() if l.split(",")[0].strip() == str(os.getpid())]
print("XLA_PYTHON_CLIENT_PREALLOCATE=%s bm25s %s: this process holds %s" % (os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"), bm25s.__version__, mine[0].split(",")[1].strip() if mine else "no GPU memory"))'
python3 -c "$probe"
XLA_PYTHON_CLIENT_PREALLOCATE=true python3 -c "$probe"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
