"""Does a CUDA-graph capture in one thread break another thread's random ops? (session 11, H200)

Thread A captures graphs of a few matmuls in a loop (thread_local capture mode, as vecrag's miner would); the main
thread runs dropout on the GPU meanwhile. Prints how many dropout calls raised, and the first error."""
import threading
import time

import torch

stop, errors, calls, captured = threading.Event(), [], [0], [0]
x = torch.randn(64, 64, device="cuda")


def capture_loop():
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):  # warm-up: the thread's cuBLAS handle is created outside any capture
        (x @ x).sum().item()
    while not stop.is_set():
        g = torch.cuda.CUDAGraph()
        with torch.cuda.stream(s), torch.cuda.graph(g, capture_error_mode="thread_local"):
            y = x
            for _ in range(2000):  # a long capture window: the GIL switches threads inside it
                y = y @ x
        del g
        captured[0] += 1


th = threading.Thread(target=capture_loop, daemon=True)
th.start()
torch.cuda.synchronize()
t_end = time.monotonic() + 3.0
while time.monotonic() < t_end:
    try:
        torch.nn.functional.dropout(x, 0.1)
    except RuntimeError as e:
        errors.append(str(e).splitlines()[0])
    calls[0] += 1
stop.set()
th.join(10)
print(f"graphs captured {captured[0]}, dropout calls {calls[0]}, raised {len(errors)}" + (f"; first: {errors[0]}" if errors else ""))
