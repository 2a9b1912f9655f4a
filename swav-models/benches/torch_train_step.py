"""PyTorch's side of swav-models' train_step bench: forward + backward of the torchvision
backbones (without fc) on the CPU, same batch sizes and resolutions.

Run: python3 swav-models/benches/torch_train_step.py [threads] [name filter]   (default 2, both)
"""

import sys
import time

import torch
import torchvision

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)


def measure(name, model, batch, side, iters):
    model.fc = torch.nn.Identity()
    x = torch.randn(batch, 3, side, side)
    model(x).sum().backward()
    start = time.perf_counter()
    for _ in range(iters):
        model.zero_grad()
        model(x).sum().backward()
    dt = (time.perf_counter() - start) / iters
    print(f"{name}: {batch / dt:.1f} images/s ({dt:.2f} s per step of {batch}, {torch.get_num_threads()} threads)")


wanted = sys.argv[2] if len(sys.argv) > 2 else ""
if wanted in "resnet18-cifar 32px batch 64":
    rn18 = torchvision.models.resnet18()
    rn18.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    rn18.maxpool = torch.nn.Identity()
    measure("resnet18-cifar 32px batch 64", rn18, 64, 32, 3)
if wanted in "resnet50 224px batch 32":
    measure("resnet50 224px batch 32", torchvision.models.resnet50(), 32, 224, 1)
