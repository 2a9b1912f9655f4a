"""A PyTorch reference for "the Sinkhorn is a negligible share of a training step": one
forward + backward of a ResNet-18 with the CIFAR stem on the CIFAR preset's batch (256 images
x 2 crops of 32 px = 512 crops), on the CPU with 2 threads, on the same machine as the
swav-core sinkhorn bench.

Run: python3 swav-core/benches/torch_step_share.py
"""

import time

import torch
import torchvision

torch.set_num_threads(2)
model = torchvision.models.resnet18(num_classes=128)
model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
model.maxpool = torch.nn.Identity()
x = torch.randn(512, 3, 32, 32)
model(x).sum().backward()
times = []
for _ in range(3):
    start = time.perf_counter()
    model(x).sum().backward()
    times.append(time.perf_counter() - start)
print(f"resnet18-cifar fwd+bwd, 512 crops of 32 px: {min(times):.2f} s (2 threads)")
