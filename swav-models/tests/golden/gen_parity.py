"""Writes the PyTorch parity fixtures of swav-models' tests: small models' weights (.pt) and
their outputs on a fixed input (parity.json).

- `resnet18_w8.pt`: torchvision's ResNet-18 layout with base width 8 (ImageNet stem), as a
  plain `state_dict` with its `fc`;
- `resnet18_w8_cifar.pt`: the same with the CIFAR stem (3x3 stride-1 conv1, no max-pool);
- `swav_rn50_w4.pt`: a ResNet-50 (bottlenecks) of base width 4 with SwAV's projection head
  (Linear -> BatchNorm1d -> ReLU -> Linear) and prototypes, saved as the original code saves
  it, with the `module.` prefix.

BatchNorm weights, biases and running statistics are randomised so the eval-mode outputs test
them. Run: python3 swav-models/tests/golden/gen_parity.py   (needs torch, torchvision)
"""

import json
import os

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock, Bottleneck

torch.manual_seed(2020)
HERE = os.path.dirname(os.path.abspath(__file__))


class NarrowResNet(nn.Module):
    """torchvision's ResNet with the stem width as a parameter; same module names."""

    def __init__(self, block, layers, base=64, cifar_stem=False, num_classes=10):
        super().__init__()
        self.inplanes = base
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, base, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, base, layers[0], 1)
        self.layer2 = self._make_layer(block, base * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, base * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, base * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(base * 8 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class SwavNet(nn.Module):
    """The original `resnet50.py` arrangement: backbone modules at the top level, then
    `projection_head` and `prototypes`."""

    def __init__(self, backbone, hidden, out, k):
        super().__init__()
        for name in ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"]:
            setattr(self, name, getattr(backbone, name))
        d = backbone.fc.in_features
        self.projection_head = nn.Sequential(nn.Linear(d, hidden), nn.BatchNorm1d(hidden),
                                             nn.ReLU(inplace=True), nn.Linear(hidden, out))
        self.prototypes = nn.Linear(out, k, bias=False)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        f = torch.flatten(self.avgpool(x), 1)
        z = nn.functional.normalize(self.projection_head(f), dim=1, p=2)
        return f, z, self.prototypes(z)


class Wrapper(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.module = m


def randomise_bn(model):
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


out = {"torch": torch.__version__}
for name, cifar, size in [("resnet18_w8", False, 64), ("resnet18_w8_cifar", True, 32)]:
    net = NarrowResNet(BasicBlock, [2, 2, 2, 2], base=8, cifar_stem=cifar)
    randomise_bn(net)
    net.eval()
    x = torch.randn(2, 3, size, size)
    torch.save(net.state_dict(), os.path.join(HERE, name + ".pt"))
    out[name] = {"input_shape": list(x.shape), "input": flat(x), "features": flat(net.features(x))}

rn50 = NarrowResNet(Bottleneck, [3, 4, 6, 3], base=4)
swav = SwavNet(rn50, hidden=16, out=8, k=10)
randomise_bn(swav)
swav.eval()
x = torch.randn(2, 3, 64, 64)
f, z, s = swav(x)
torch.save(Wrapper(swav).state_dict(), os.path.join(HERE, "swav_rn50_w4.pt"))
out["swav_rn50_w4"] = {"input_shape": list(x.shape), "input": flat(x), "features": flat(f),
                       "embeddings": flat(z), "scores": flat(s)}
with open(os.path.join(HERE, "parity.json"), "w") as fh:
    json.dump(out, fh)
print("wrote fixtures to", HERE)
