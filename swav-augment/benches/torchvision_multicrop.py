"""torchvision + PIL doing swav-augment's multicrop benchmark work, on one core.

The pipeline is the original SwAV one (facebookresearch/swav, src/multicropdataset.py):
RandomResizedCrop -> RandomHorizontalFlip -> RandomApply(ColorJitter(0.8, 0.8, 0.8, 0.2), 0.8)
-> RandomGrayscale(0.2) -> PIL GaussianBlur (p 0.5, radius 0.1-2) -> ToTensor -> Normalize,
for 2 x 224 + 6 x 96 crops of a 500 x 375 image; and the CIFAR preset (2 x 32 crops, jitter
0.4/0.4/0.4/0.1, no blur) on a 32 x 32 image. The input is already decoded, as in the Rust bench.

Run: python3 swav-augment/benches/torchvision_multicrop.py
"""

import random
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image, ImageFilter

torch.set_num_threads(1)


class PILRandomGaussianBlur:
    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.0):
        self.p, self.lo, self.hi = p, radius_min, radius_max

    def __call__(self, img):
        if np.random.rand() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.lo, self.hi)))


def synthetic(w, h):
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * 7 + y * 13) % 256, (x * x + y) % 256, (x ^ y) % 256], axis=-1)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def pipeline(groups, strength, blur, mean, std):
    color = [T.RandomApply([T.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)], p=0.8),
             T.RandomGrayscale(p=0.2)]
    if blur:
        color.append(PILRandomGaussianBlur())
    trans = []
    for count, size, lo, hi in groups:
        t = T.Compose([T.RandomResizedCrop(size, scale=(lo, hi)), T.RandomHorizontalFlip(p=0.5),
                       T.Compose(color), T.ToTensor(), T.Normalize(mean=mean, std=std)])
        trans.extend([t] * count)
    return lambda img: [t(img) for t in trans]


def measure(name, fn, img, seconds=10.0):
    fn(img)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(img)
        n += 1
    dt = time.perf_counter() - start
    print(f"{name}: {n / dt:.1f} images/s ({1000 * dt / n:.2f} ms/image, 1 thread)")


measure("swav_2x224_6x96_500x375",
        pipeline([(2, 224, 0.14, 1.0), (6, 96, 0.05, 0.14)], 1.0, True,
                 [0.485, 0.456, 0.406], [0.228, 0.224, 0.225]),
        synthetic(500, 375))
measure("cifar_2x32_32x32",
        pipeline([(2, 32, 0.14, 1.0)], 0.5, False, [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]),
        synthetic(32, 32))
