"""The PyTorch peer of `swav bench --probe`: the cached linear probe (nn.Linear, cross-entropy,
SGD lr 0.3, momentum 0.9, weight decay 1e-6, batches of 256, shuffled every epoch) over the same
feature file on disk (numpy memmap; the file `swav bench --probe` wrote), timed per epoch; one
JSON line.

Run: python3 scripts/peers/torch_linear_probe.py FEATURE_FILE [--epochs 1] [--threads 2]
"""

import argparse
import json
import time

import numpy as np
import torch

p = argparse.ArgumentParser()
p.add_argument("file")
p.add_argument("--epochs", type=int, default=1)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)

header = np.fromfile(a.file, dtype=np.uint8, count=32)
assert bytes(header[:8]) == b"SWAVFEAT", "not a swav-rs feature file"
dim = int(header[12:16].view("<u4")[0])
rows = int(header[16:24].view("<u8")[0])
x = np.memmap(a.file, dtype="<f4", mode="r", offset=32, shape=(rows, dim))
y = torch.from_numpy(np.memmap(a.file, dtype="<i8", mode="r", offset=32 + rows * dim * 4,
                               shape=(rows,)).copy())
classes = int(y.max()) + 1
model = torch.nn.Linear(dim, classes)
model.weight.data.normal_(0, 0.01)
model.bias.data.zero_()
opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)
loss_fn = torch.nn.CrossEntropyLoss()
g = np.random.default_rng(31)
t0 = time.time()
for epoch in range(a.epochs):
    order = g.permutation(rows)
    for i in range(0, rows, a.batch):
        idx = np.sort(order[i:i + a.batch])  # memmap fancy indexing reads rows in file order
        xb = torch.from_numpy(np.asarray(x[idx]))
        loss = loss_fn(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
secs = time.time() - t0
print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "check": "linear-probe",
                  "rows": rows, "dim": dim, "classes": classes, "batch": a.batch,
                  "epochs": a.epochs, "threads": a.threads, "seconds": round(secs, 1),
                  "epoch_s": round(secs / a.epochs, 1),
                  "images_per_s": round(rows * a.epochs / secs),
                  "hundred_epochs_h": round(secs / a.epochs * 100 / 3600, 2)}))
