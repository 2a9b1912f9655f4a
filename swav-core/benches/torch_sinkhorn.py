"""The original SwAV `distributed_sinkhorn` (world size 1) in PyTorch on the CPU, timed at the
sizes of swav-core's criterion bench (B = 256 and 4096, K = 3000, 3 iterations, f32).

Run: python3 swav-core/benches/torch_sinkhorn.py [threads]   (default: 2 threads)
"""

import sys
import time

import torch

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)


@torch.no_grad()
def sinkhorn(out, epsilon=0.05, iters=3):
    q = torch.exp(out / epsilon).t()
    b = q.shape[1]
    k = q.shape[0]
    q /= torch.sum(q)
    for _ in range(iters):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= k
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


g = torch.Generator().manual_seed(31)
for b, k in [(256, 3000), (4096, 3000)]:
    s = torch.rand(b, k, generator=g) * 2 - 1
    sinkhorn(s)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 5.0:
        sinkhorn(s)
        n += 1
    dt = (time.perf_counter() - start) / n
    print(f"torch sinkhorn {b}x{k}: {dt * 1000:.2f} ms ({torch.get_num_threads()} threads)")
