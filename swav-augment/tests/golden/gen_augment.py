"""Writes augment.json: golden outputs of torchvision (on PIL images) for swav-augment's tests.

Every transform is applied with fixed parameters (no randomness), so Rust can apply the same
operation and compare. Images are stored as base64 of raw RGB bytes (row-major HWC).

Run:  python3 swav-augment/tests/golden/gen_augment.py
Needs: torch, torchvision, pillow, numpy (versions are recorded in the JSON).
The Rust tests only read the JSON; they never run Python.
"""

import base64
import json
import os

import numpy as np
import PIL
import torch
import torchvision
import torchvision.transforms.functional as F
from PIL import Image, ImageFilter
from torchvision.transforms import InterpolationMode, RandomResizedCrop

rng = np.random.default_rng(1234)


def make_image(w, h):
    """A small image with gradients, edges, saturated and gray regions and noise."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1))
    g = (y * 255 // max(h - 1, 1))
    b = ((x + y) * 7) % 256
    img = np.stack([r, g, b], axis=-1).astype(np.int32)
    img += rng.integers(-40, 41, size=img.shape)
    # A gray block, a saturated block and a dark block.
    img[h // 4: h // 2, w // 4: w // 2] = 128
    img[h // 2: 3 * h // 4, w // 2: 3 * w // 4] = [250, 10, 20]
    img[: h // 5, -w // 5:] = [3, 2, 5]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def enc(im):
    a = np.asarray(im, dtype=np.uint8)
    assert a.ndim == 3 and a.shape[2] == 3
    return {"width": im.size[0], "height": im.size[1],
            "rgb": base64.b64encode(a.tobytes()).decode("ascii")}


def floats(t):
    return [float(v) for v in t.reshape(-1).tolist()]


img = make_image(61, 47)
small = make_image(9, 7)
out = {
    "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                 "pillow": PIL.__version__, "numpy": np.__version__},
    "image": enc(img),
    "small": enc(small),
}

# RandomResizedCrop's deterministic part: crop then bilinear resize.
crops = []
for (i, j, h, w, size_h, size_w) in [
    (0, 0, 47, 61, 32, 32),     # whole image, downscale
    (5, 7, 30, 40, 16, 16),     # strong downscale
    (10, 3, 12, 9, 40, 40),     # upscale
    (2, 20, 20, 20, 20, 20),    # same size: a plain crop
    (0, 0, 47, 61, 24, 50),     # non-uniform scale
    (40, 55, 7, 6, 11, 13),     # corner crop
]:
    o = F.resized_crop(img, i, j, h, w, [size_h, size_w], InterpolationMode.BILINEAR)
    crops.append({"top": i, "left": j, "height": h, "width": w,
                  "out_height": size_h, "out_width": size_w, "out": enc(o)})
out["resized_crop"] = crops

# RandomResizedCrop's fallback: no scale in (5, 6) fits, so all 10 attempts fail and the
# central crop is returned, deterministically.
fallback = []
for (w, h) in [(100, 20), (20, 100), (50, 40), (40, 50), (64, 48), (7, 3), (3, 7), (1, 1)]:
    i, j, hh, ww = RandomResizedCrop.get_params(Image.new("RGB", (w, h)), [5.0, 6.0], [3 / 4, 4 / 3])
    fallback.append({"width": w, "height": h, "top": i, "left": j, "crop_height": hh, "crop_width": ww})
out["fallback"] = fallback

out["hflip"] = enc(F.hflip(img))
out["grayscale"] = enc(F.rgb_to_grayscale(img, num_output_channels=3))

factors = [0.0, 0.2, 0.5, 0.77, 1.0, 1.3, 1.8]
out["brightness"] = [{"factor": f, "out": enc(F.adjust_brightness(img, f))} for f in factors]
out["contrast"] = [{"factor": f, "out": enc(F.adjust_contrast(img, f))} for f in factors]
out["saturation"] = [{"factor": f, "out": enc(F.adjust_saturation(img, f))} for f in factors]
out["hue"] = [{"factor": f, "out": enc(F.adjust_hue(img, f))}
              for f in [-0.5, -0.2, -0.05, 0.0, 0.01, 0.1, 0.2, 0.5]]
out["solarize"] = [{"threshold": t, "out": enc(F.solarize(img, t))} for t in [0, 1, 128, 200, 255]]

# Colour jitter as ColorJitter.forward applies it: a given order and given factors.
jitter = []
for order, (b, c, s, h) in [([0, 1, 2, 3], (1.4, 0.6, 1.7, 0.1)),
                            ([3, 2, 1, 0], (0.5, 1.5, 0.3, -0.15)),
                            ([2, 0, 3, 1], (1.8, 0.2, 1.0, 0.2))]:
    o = img
    for fn_id in order:
        if fn_id == 0:
            o = F.adjust_brightness(o, b)
        elif fn_id == 1:
            o = F.adjust_contrast(o, c)
        elif fn_id == 2:
            o = F.adjust_saturation(o, s)
        else:
            o = F.adjust_hue(o, h)
    jitter.append({"order": order, "brightness": b, "contrast": c, "saturation": s,
                   "hue": h, "out": enc(o)})
out["jitter"] = jitter

# PIL's radius form, as the original SwAV's PILRandomGaussianBlur calls it.
out["pil_blur"] = [{"radius": r, "out": enc(img.filter(ImageFilter.GaussianBlur(radius=r)))}
                   for r in [0.1, 0.5, 1.0, 1.7, 2.0, 5.0]]
# Radii larger than a tiny image: the edge pixel is repeated beyond the ends.
tiny = make_image(5, 3)
out["tiny"] = enc(tiny)
out["pil_blur_tiny"] = [{"radius": r, "out": enc(tiny.filter(ImageFilter.GaussianBlur(radius=r)))}
                        for r in [0.7, 2.0, 6.0]]
# torchvision's kernel form.
out["kernel_blur"] = [{"kernel_size": k, "sigma": s,
                       "out": enc(F.gaussian_blur(img, [k, k], [s, s]))}
                      for (k, s) in [(3, 0.5), (5, 1.0), (9, 2.0), (23, 1.5), (1, 1.0)]]

# ToTensor + Normalize, both presets.
t = F.to_tensor(small)
out["normalize"] = [
    {"mean": m, "std": s, "out": floats(F.normalize(t, m, s))}
    for (m, s) in [([0.485, 0.456, 0.406], [0.228, 0.224, 0.225]),
                   ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
]

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "augment.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path, os.path.getsize(path), "bytes")
