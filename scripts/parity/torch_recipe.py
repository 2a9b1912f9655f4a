"""A swav-rs recipe trained in PyTorch: the same loop as `torch_trajectory.py` (main_swav.py's,
transcribed), on an image folder with torchvision's augmentation, evaluated by the same kNN
monitor, so that a recipe's result can be compared with swav-rs's on the same data and epochs.

    python3 scripts/parity/torch_recipe.py RUN_DIR/config.toml --data DIR --out torch.json

The config is the one swav-rs writes into its run folder (every field resolved). Read from it:
the crops (`nmb_crops`, `size_crops`, `min_scale_crops`, `max_scale_crops`), the model
(`base_width`, `hidden_mlp`, `feat_dim`, `nmb_prototypes`; ResNet-18 with the CIFAR stem only),
the loss (`crops_for_assign`, `temperature`, `epsilon`, `sinkhorn_iterations`), the queue, the
prototypes' freeze, the schedule (`epochs`, `batch_size`, `base_lr`, `final_lr`,
`warmup_epochs`, `start_warmup`) and the optimiser (LARS as apex's LARC, with or without
`lars_exclude_bn_bias`, or SGD), `data.augment` (`cifar` or `demo`: torchvision's
RandomResizedCrop, horizontal flip, ColorJitter with p 0.8, RandomGrayscale, CIFAR-10
normalisation), and the monitor (`knn_every`, `knn_k`, `knn_temperature`; the whole train and
test splits, as `knn_train_samples = 0` and `knn_test_samples = 0` ask).

Not the same as swav-rs, by construction: the initial weights (PyTorch's own initialisation,
as main_swav.py's ResNet does it), the random crops and the batches' order. What is compared
is where a recipe ends, not a trajectory (that is `torch_trajectory.py`'s job).

Writes one JSON object per line to --out: the random-initialisation kNN, then per epoch the mean
loss, the kNN (when evaluated), the epoch's seconds and images/s.
"""

import argparse
import json
import math
import os
import sys
import time
import tomllib

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torchvision.datasets import ImageFolder

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_trajectory import LARC, Net, swav_loss  # noqa: E402

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def augmentation(cfg):
    s, d = cfg["swav"], cfg["data"]
    if d["augment"] == "cifar":
        strength, gray = 0.5, 0.2
    elif d["augment"] == "demo":
        strength, gray = 1.0, 0.5
    else:
        raise SystemExit(f"data.augment = {d['augment']!r}: only cifar and demo are transcribed")
    jitter = T.RandomApply([T.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength,
                                          0.2 * strength)], p=0.8)
    per_crop = []
    for n, size, lo, hi in zip(s["nmb_crops"], s["size_crops"], s["min_scale_crops"],
                               s["max_scale_crops"]):
        t = T.Compose([T.RandomResizedCrop(size, scale=(lo, hi)), T.RandomHorizontalFlip(),
                       jitter, T.RandomGrayscale(gray), T.ToTensor(),
                       T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
        per_crop += [t] * n
    return lambda img: [t(img) for t in per_crop]


def schedule(s, ipe):
    warmup = np.linspace(s["start_warmup"], s["base_lr"], ipe * s["warmup_epochs"])
    n_cos = ipe * (s["epochs"] - s["warmup_epochs"])
    cosine = np.array([s["final_lr"] + 0.5 * (s["base_lr"] - s["final_lr"])
                       * (1 + math.cos(math.pi * t / n_cos)) for t in np.arange(n_cos)])
    return np.concatenate((warmup, cosine))


@torch.no_grad()
def features(model, loader, fmt):
    model.eval()
    xs, ys = [], []
    for x, y in loader:
        xs.append(model.forward_backbone(x.contiguous(memory_format=fmt)))
        ys.append(y)
    model.train()
    return F.normalize(torch.cat(xs), dim=1), torch.cat(ys)


@torch.no_grad()
def knn(model, train_loader, test_loader, fmt, k, temperature, classes):
    """The monitor of swav-rs: cosine similarity, the k nearest, votes weighted by
    exp(similarity / temperature); top-1 in %."""
    xtr, ytr = features(model, train_loader, fmt)
    xte, yte = features(model, test_loader, fmt)
    correct = 0
    for i in range(0, len(xte), 1000):
        sim = xte[i:i + 1000] @ xtr.t()
        w, idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(w), classes).scatter_add_(1, ytr[idx], (w / temperature).exp())
        correct += (votes.argmax(1) == yte[i:i + 1000]).sum().item()
    return 100.0 * correct / len(xte)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--data", required=True, help="an image folder with train/ and test/")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--loader-workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nchw", action="store_true", help="NCHW instead of channels-last")
    a = p.parse_args()
    with open(a.config, "rb") as f:
        cfg = tomllib.load(f)
    s, r = cfg["swav"], cfg["run"]
    assert s["arch"] == "resnet18" and s["cifar_stem"], "ResNet-18 with the CIFAR stem only"
    assert len(s["nmb_prototypes"]) == 1, "one prototype head"
    assert r["knn_train_samples"] == 0 and r["knn_test_samples"] == 0, "the whole splits"
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    fmt = torch.contiguous_format if a.nchw else torch.channels_last

    train_set = ImageFolder(os.path.join(a.data, "train"), augmentation(cfg))
    bs = s["batch_size"]
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=bs, shuffle=True, drop_last=True, num_workers=a.loader_workers,
        persistent_workers=a.loader_workers > 0)
    plain = T.Compose([T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    eval_loaders = [torch.utils.data.DataLoader(ImageFolder(os.path.join(a.data, split), plain),
                                                batch_size=512, num_workers=a.loader_workers)
                    for split in ("train", "test")]
    classes = len(train_set.classes)

    model = Net(s["base_width"], s["hidden_mlp"], s["feat_dim"], s["nmb_prototypes"][0])
    for m in model.modules():  # main_swav.py's ResNet initialisation
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    model = model.to(memory_format=fmt)
    model.train()
    sgd = torch.optim.SGD(model.parameters(), lr=s["base_lr"], momentum=s["momentum"],
                          weight_decay=s["wd"])
    if s["optimizer"] == "lars":
        optimizer = LARC(sgd, s["lars_trust_coefficient"], s.get("lars_clip", False),
                         exclude_1d=s["lars_exclude_bn_bias"])
    elif s["optimizer"] == "sgd":
        optimizer = sgd
    else:
        raise SystemExit(f"optimizer {s['optimizer']!r} is not transcribed")
    ipe = len(loader)
    lrs = schedule(s, ipe)
    groups_at = np.cumsum([0] + s["nmb_crops"])
    assign = s["crops_for_assign"]
    queue = None
    log = open(a.out, "w")

    def emit(obj):
        print(json.dumps(obj), flush=True)
        log.write(json.dumps(obj) + "\n")
        log.flush()

    knn_args = (eval_loaders[0], eval_loaders[1], fmt, r["knn_k"], r["knn_temperature"], classes)
    emit({"torch": torch.__version__, "threads": a.threads, "random_init_knn_top1":
          knn(model, *knn_args), "iterations_per_epoch": ipe})
    it = 0
    for epoch in range(s["epochs"]):
        if s["queue_length"] > 0 and epoch >= s["epoch_queue_starts"] and queue is None:
            queue = torch.zeros(len(assign), s["queue_length"], s["feat_dim"])
        use_the_queue = False
        t0 = time.time()
        total = 0.0
        for crops, _ in loader:
            lr = lrs[it]
            for g in optimizer.param_groups:
                g["lr"] = lr
            with torch.no_grad():
                w = F.normalize(model.prototypes.weight.data.clone(), dim=1, p=2)
                model.prototypes.weight.copy_(w)
            groups = [torch.cat(crops[groups_at[i]:groups_at[i + 1]])
                      .contiguous(memory_format=fmt) for i in range(len(s["nmb_crops"]))]
            embedding, output = model(groups)
            loss, use_the_queue = swav_loss(model, embedding.detach(), output, queue,
                                            use_the_queue, s)
            optimizer.zero_grad()
            loss.backward()
            if it < s["freeze_prototypes_niters"]:
                model.prototypes.weight.grad = None
            optimizer.step()
            total += float(loss.item())
            it += 1
        seconds = time.time() - t0
        row = {"epoch": epoch + 1, "loss": total / ipe, "seconds": seconds,
               "images_per_s": ipe * bs / seconds}
        last = epoch + 1 == s["epochs"]
        if r["knn_every"] > 0 and ((epoch + 1) % r["knn_every"] == 0 or last):
            row["knn_top1"] = knn(model, *knn_args)
        emit(row)


if __name__ == "__main__":
    main()
