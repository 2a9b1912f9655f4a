"""PyTorch side of `cargo run -p swav-models --example conv_parts`: a 3x3 convolution's forward,
input gradient and weight gradient on the CPU (2 threads), same shapes.

Run: python3 swav-engine/examples/torch_conv_parts.py
"""
import time, torch, torch.nn.functional as F
torch.set_num_threads(2)
def best(f):
    b = 1e9
    for _ in range(4):
        t = time.perf_counter(); f(); b = min(b, time.perf_counter() - t)
    return b * 1e3
for (B, C, S, st) in [(64, 64, 32, 1), (64, 128, 16, 1), (64, 256, 8, 1), (64, 512, 4, 1), (64, 64, 32, 2)]:
    so = S // st
    x = torch.randn(B, C, S, S); w = torch.randn(C, C, 3, 3) * 0.1; g = torch.randn(B, C, so, so)
    fwd = best(lambda: F.conv2d(x, w, None, st, 1).sum().item())
    xb = best(lambda: torch.nn.grad.conv2d_input(x.shape, w, g, st, 1).sum().item())
    wb = best(lambda: torch.nn.grad.conv2d_weight(x, w.shape, g, st, 1).sum().item())
    gf = 2 * B * C * C * 9 * so * so / 1e9
    print(f"B{B} C{C} {S}px s{st}: fwd {fwd:.1f} ms ({gf/fwd*1e3:.1f} GF/s)  x-grad {xb:.1f} ms ({gf/xb*1e3:.1f})  w-grad {wb:.1f} ms ({gf/wb*1e3:.1f})")
