"""Checks an export of `cargo xtask export --probe` in PyTorch: the `.pt` state dict loads with
`torch.load(..., weights_only=True)` into torchvision's ResNet layout (torchvision's own
`resnet18` / `resnet50` at base width 64, the same module tree at a narrower width otherwise;
CIFAR stem: 3x3 stride-1 conv1, no max-pool) with strict key checking, the safetensors file
holds the same tensors, and the eval-mode features of the probe input match ours to 1e-4 (with
`--head`: the embeddings and prototype scores too).

Run: python3 scripts/parity/torch_export_check.py EXPORT_DIR   (needs torch, torchvision)
"""

import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        dt = {"F32": "<f4", "I64": "<i8"}[h["dtype"]]
        a, b = h["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dt).reshape(h["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def resnet(arch, width):
    block, layers = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
                     "resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet101": (Bottleneck, [3, 4, 23, 3]),
                     "resnet152": (Bottleneck, [3, 8, 36, 3])}[arch]
    if width == 64:
        return getattr(torchvision.models, arch)()
    m = torchvision.models.resnet.ResNet(block, layers)
    # The same module tree at a narrower width.
    m.inplanes = width
    m.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    m.bn1 = nn.BatchNorm2d(width)
    m.layer1 = m._make_layer(block, width, layers[0])
    m.layer2 = m._make_layer(block, width * 2, layers[1], stride=2)
    m.layer3 = m._make_layer(block, width * 4, layers[2], stride=2)
    m.layer4 = m._make_layer(block, width * 8, layers[3], stride=2)
    m.fc = nn.Linear(width * 8 * block.expansion, 1000)
    return m


def main():
    d = sys.argv[1]
    meta = json.load(open(os.path.join(d, "probe.json")))
    probe = read_safetensors(os.path.join(d, "probe.safetensors"))
    head = "embeddings" in probe
    stem = "swav" if head else meta["arch"]
    sd = torch.load(os.path.join(d, f"{stem}.pt"), weights_only=True)
    st = read_safetensors(os.path.join(d, f"{stem}.safetensors"))
    assert sorted(sd) == sorted(st), "the .pt and the safetensors file hold other keys"
    for k in sd:
        assert torch.equal(sd[k], st[k]), f"{k} differs between the .pt and the safetensors file"
    m = resnet(meta["arch"], meta["base_width"])
    if meta["cifar_stem"]:
        m.conv1 = nn.Conv2d(3, meta["base_width"], 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    backbone = {k: v for k, v in sd.items() if not k.startswith(("projection_head", "prototypes"))}
    if head:
        m.fc = nn.Identity()
    m.load_state_dict(backbone, strict=True)
    m.fc = nn.Identity()
    m.eval()
    worst = {}
    with torch.no_grad():
        f = m(probe["input"])
        worst["features"] = float((f - probe["features"]).abs().max())
        if head:
            ph = nn.Sequential(nn.Linear(f.shape[1], meta["hidden_mlp"]), nn.BatchNorm1d(meta["hidden_mlp"]),
                               nn.ReLU(), nn.Linear(meta["hidden_mlp"], meta["feat_dim"]))
            ph.load_state_dict({k[len("projection_head."):]: v for k, v in sd.items()
                                if k.startswith("projection_head.")}, strict=True)
            ph.eval()
            z = F.normalize(ph(f), dim=1, p=2)
            worst["embeddings"] = float((z - probe["embeddings"]).abs().max())
            scores = z @ sd["prototypes.weight"].t()
            worst["scores"] = float((scores - probe["scores"]).abs().max())
    print(json.dumps({"torch": torch.__version__, "keys": len(sd), "max_abs_difference": worst}))
    bad = {k: v for k, v in worst.items() if v > 1e-4}
    assert not bad, f"differences over 1e-4: {bad}"
    print("export check: PASS")


if __name__ == "__main__":
    main()
