# Read bandwidth of a plain reduction on the GPU, at the sizes of the decode step's
# products (docs/PERF.md, session 13). Needs PyTorch with CUDA.
import torch
for mb in [9.4, 14.2, 33, 66, 431]:
    n = int(mb * 1e6 / 4)
    a = torch.randn(n, device="cuda")
    for _ in range(3): a.sum()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(); s.record()
    for _ in range(50): a.sum()
    e.record(); torch.cuda.synchronize()
    us = s.elapsed_time(e) / 50 * 1e3
    print(f"torch sum {mb} MB: {us:.1f} us, {mb*1e6/us/1e6:.0f} GB/s")
