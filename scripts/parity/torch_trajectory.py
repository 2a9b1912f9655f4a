"""The reference trajectory of swav-train's parity test: the training loop of the original
`main_swav.py`, transcribed in PyTorch, run from our initial weights on our loader's crops.

Reads (from `cargo run -p swav-train --example trajectory_fixture`), in the fixture folder:
  config.toml         the run ([swav] section)
  init.safetensors    the initial weights under swav-rs's names
  crops.safetensors   one epoch of batches (b{batch}.g{group}), replayed every epoch
Writes there:
  trajectory.json     the loss and learning rate of every iteration (NCHW, 2 threads), the
                      same run's losses with three other summation orders (channels-last and/or
                      one thread: the float32 spread), and per segment (a short run restarted
                      from this run's state) the other order's losses and weight differences
  state_N, momentum_N, end_N .safetensors
                      per segment from iteration N: the weights and momentum buffers it starts
                      from, the weights it ends with
  final.safetensors   the weights after the last iteration, under swav-rs's names

What is transcribed, as `main_swav.py` does it: a per-iteration learning rate (np.linspace
warmup, then cosine); the prototypes L2-normalised before every forward; one backbone pass per
resolution group, the head over all crops; for each crop in crops_for_assign, without
gradient, the queue's scores prepended once its last row is filled, the queue shifted and
pushed, then distributed_sinkhorn (exp(scores / epsilon), Q /= sum, rows then columns,
Q *= B); the swapped loss over all other crops at temperature T; the prototypes' gradients
dropped while iteration < freeze_prototypes_niters; SGD (momentum, weight decay) under apex's
LARC (trust coefficient, eps 1e-8, `clip` as the config says). BatchNorm in training mode with
PyTorch's defaults (momentum 0.1, eps 1e-5, unbiased running variance).

Run: python3 scripts/parity/torch_trajectory.py [fixture folder]   (needs torch 2.x)
"""

import json
import math
import os
import struct
import sys
import tomllib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    HERE, "..", "..", "swav-train", "tests", "golden", "trajectory")


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        assert h["dtype"] == "F32", (name, h["dtype"])
        a, b = h["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype="<f4").reshape(h["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        data = tensors[name].detach().contiguous().to(torch.float32).numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((8 - len(text) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text.encode())
        for b in blobs:
            f.write(b)
    os.replace(path + ".tmp", path)


class Net(nn.Module):
    """ResNet-18 with the CIFAR stem at a given base width, SwAV's head and prototypes."""

    def __init__(self, base, hidden, out, k):
        super().__init__()
        self.inplanes = base
        self.conv1 = nn.Conv2d(3, base, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.layer1 = self._make_layer(base, 1)
        self.layer2 = self._make_layer(base * 2, 2)
        self.layer3 = self._make_layer(base * 4, 2)
        self.layer4 = self._make_layer(base * 8, 2)
        self.projection_head = nn.Sequential(nn.Linear(base * 8, hidden), nn.BatchNorm1d(hidden),
                                             nn.ReLU(inplace=True), nn.Linear(hidden, out))
        self.prototypes = nn.Linear(out, k, bias=False)

    def _make_layer(self, planes, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample), BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*layers)

    def forward_backbone(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, groups):
        # One backbone pass per resolution group, the head over all crops (main_swav's
        # MultiPrototypes model does the same through its `inputs` list).
        feats = torch.cat([self.forward_backbone(g) for g in groups])
        z = F.normalize(self.projection_head(feats), dim=1, p=2)
        return z, self.prototypes(z)


def ours_to_torch(name):
    """swav-rs's parameter name -> (torch name, transpose)."""
    n = name
    for a, b in [("backbone.", ""), ("downsample.conv", "downsample.0"),
                 ("downsample.bn", "downsample.1"), ("head.fc1", "projection_head.0"),
                 ("head.bn", "projection_head.1"), ("head.fc2", "projection_head.3"),
                 ("prototypes.heads.0", "prototypes"), (".gamma", ".weight"), (".beta", ".bias")]:
        n = n.replace(a, b)
    transpose = name.startswith("head.fc") and name.endswith("weight") or name.startswith("prototypes")
    return n, transpose


def load_ours(model, tensors):
    state = model.state_dict()
    seen = set()
    for name, t in tensors.items():
        tn, tr = ours_to_torch(name)
        assert tn in state, f"{name} -> {tn} not in the torch model"
        t = t.t() if tr else t
        assert state[tn].shape == t.shape, (name, tn, state[tn].shape, t.shape)
        state[tn].copy_(t)
        seen.add(tn)
    missing = [k for k in state if k not in seen and not k.endswith("num_batches_tracked")]
    assert not missing, missing


def export_ours(model, names):
    state = model.state_dict()
    out = {}
    for name in names:
        tn, tr = ours_to_torch(name)
        out[name] = (state[tn].t() if tr else state[tn]).detach().clone()
    return out


class LARC:
    """apex.parallel.LARC around an optimizer, as main_swav.py uses it."""

    def __init__(self, optimizer, trust_coefficient, clip, eps=1e-8, exclude_1d=False):
        self.optim, self.trust, self.clip, self.eps = optimizer, trust_coefficient, clip, eps
        # swav-rs's `lars_exclude_bn_bias`: one-dimensional parameters (BatchNorm's, biases)
        # left to plain momentum SGD, without adaptation or weight decay.
        self.exclude_1d = exclude_1d

    @property
    def param_groups(self):
        return self.optim.param_groups

    def zero_grad(self):
        self.optim.zero_grad()

    def step(self):
        with torch.no_grad():
            weight_decays = []
            for group in self.optim.param_groups:
                wd = group.get("weight_decay", 0)
                weight_decays.append(wd)
                group["weight_decay"] = 0
                for p in group["params"]:
                    if p.grad is None or (self.exclude_1d and p.ndim == 1):
                        continue
                    p_norm = torch.norm(p.data)
                    g_norm = torch.norm(p.grad.data)
                    if p_norm != 0 and g_norm != 0:
                        adaptive_lr = self.trust * p_norm / (g_norm + p_norm * wd + self.eps)
                        if self.clip:
                            adaptive_lr = min(adaptive_lr / group["lr"], 1)
                        p.grad.data += wd * p.data
                        p.grad.data *= adaptive_lr
        self.optim.step()
        for i, group in enumerate(self.optim.param_groups):
            group["weight_decay"] = weight_decays[i]


@torch.no_grad()
def distributed_sinkhorn(out, epsilon, iterations):
    Q = torch.exp(out / epsilon).t()
    B = Q.shape[1]
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def swav_loss(model, embedding, output, queue, use_the_queue, s):
    """main_swav.py's loss of one step: for each crop in crops_for_assign, without gradient,
    the queue's scores prepended once its last row is filled (`use_the_queue` says whether it
    was, and is returned updated), the queue shifted and pushed, distributed_sinkhorn; then
    the swapped prediction over all other crops at temperature T, averaged."""
    bs = s["batch_size"]
    n_crops = sum(s["nmb_crops"])
    loss = 0
    for i, crop_id in enumerate(s["crops_for_assign"]):
        with torch.no_grad():
            out = output[bs * crop_id: bs * (crop_id + 1)].detach()
            if queue is not None:
                if use_the_queue or not torch.all(queue[i, -1, :] == 0):
                    use_the_queue = True
                    out = torch.cat((torch.mm(queue[i], model.prototypes.weight.t()), out))
                queue[i, bs:] = queue[i, :-bs].clone()
                queue[i, :bs] = embedding[crop_id * bs: (crop_id + 1) * bs]
            q = distributed_sinkhorn(out, s["epsilon"], s["sinkhorn_iterations"])[-bs:]
        subloss = 0
        for v in np.delete(np.arange(n_crops), crop_id):
            x = output[bs * v: bs * (v + 1)] / s["temperature"]
            subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
        loss += subloss / (n_crops - 1)
    return loss / len(s["crops_for_assign"]), use_the_queue


def train(cfg, init, batches, channels_last, threads, start=0, stop=None, momentum=None,
          dump_at=()):
    """Trains from `init` (weights under our names) at iteration `start`, with the momentum
    buffers `momentum` (our names, as the model holds them) when resuming, up to iteration
    `stop`; returns the model, the losses and rates of the iterations run, and the states
    (weights, momentum buffers) before each iteration of `dump_at`."""
    s = cfg["swav"]
    torch.set_num_threads(threads)
    model = Net(s["base_width"], s["hidden_mlp"], s["feat_dim"], s["nmb_prototypes"][0])
    load_ours(model, init)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    model.train()
    ipe = len(batches)
    epochs = s["epochs"]
    # main_swav.py's per-iteration schedule.
    warmup = np.linspace(s["start_warmup"], s["base_lr"], ipe * s["warmup_epochs"])
    n_cos = ipe * (epochs - s["warmup_epochs"])
    cosine = np.array([s["final_lr"] + 0.5 * (s["base_lr"] - s["final_lr"])
                       * (1 + math.cos(math.pi * t / n_cos)) for t in np.arange(n_cos)])
    schedule = np.concatenate((warmup, cosine))
    sgd = torch.optim.SGD(model.parameters(), lr=s["base_lr"], momentum=s["momentum"],
                          weight_decay=s["wd"])
    assert s["optimizer"] == "lars" and not s["lars_exclude_bn_bias"], "the original's LARC"
    optimizer = LARC(sgd, s["lars_trust_coefficient"], s.get("lars_clip", False))
    names = sorted(init)
    by_torch = {ours_to_torch(n)[0]: n for n in names}
    params = dict(model.named_parameters())
    if momentum:
        for tn, p in params.items():
            n = by_torch[tn]
            if n in momentum:
                buf = momentum[n].t() if ours_to_torch(n)[1] else momentum[n]
                sgd.state[p]["momentum_buffer"] = buf.clone().contiguous()
    dumps = {}
    assign = s["crops_for_assign"]
    queue = None
    losses, lrs = [], []
    stop = len(schedule) if stop is None else stop
    assert start < ipe * s["epoch_queue_starts"] or s["queue_length"] == 0, "no queue to resume"
    it = start
    for epoch in range(start // ipe, epochs):
        if s["queue_length"] > 0 and epoch >= s["epoch_queue_starts"] and queue is None:
            queue = torch.zeros(len(assign), s["queue_length"], s["feat_dim"])
        use_the_queue = False
        for groups in batches[it - epoch * ipe:]:
            if it == stop:
                return model, losses, lrs, dumps
            if it in dump_at:
                weights = export_ours(model, names)
                bufs = {}
                for tn, p in params.items():
                    buf = sgd.state.get(p, {}).get("momentum_buffer")
                    if buf is not None:
                        n = by_torch[tn]
                        bufs[n] = (buf.t() if ours_to_torch(n)[1] else buf).clone()
                dumps[it] = (weights, bufs)
            lr = schedule[it]
            for g in optimizer.param_groups:
                g["lr"] = lr
            with torch.no_grad():
                w = F.normalize(model.prototypes.weight.data.clone(), dim=1, p=2)
                model.prototypes.weight.copy_(w)
            embedding, output = model([g.contiguous(memory_format=fmt) for g in groups])
            loss, use_the_queue = swav_loss(model, embedding.detach(), output, queue,
                                            use_the_queue, s)
            optimizer.zero_grad()
            loss.backward()
            if it < s["freeze_prototypes_niters"]:
                for name, p in model.named_parameters():
                    if "prototypes" in name:
                        p.grad = None
            optimizer.step()
            losses.append(float(loss.item()))
            lrs.append(float(lr))
            it += 1
    return model, losses, lrs, dumps


# Segments restarted from the reference run's state (weights and momentum buffers, before the
# queue exists): float32 trajectories of this run diverge by a factor of about 10 every 3 to 5
# iterations (trajectory.json's `loss_other`: the same run with another summation order), so
# each event is compared over a short horizon from a common state: the warmup's first steps
# (from the initial weights), the prototypes' unfreezing (iteration 70), the queue's creation
# (100) and first use (104, once full).
SEGMENTS = [(0, 12), (68, 8), (98, 10)]


def main():
    with open(os.path.join(FIXTURE, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    init = read_safetensors(os.path.join(FIXTURE, "init.safetensors"))
    crops = read_safetensors(os.path.join(FIXTURE, "crops.safetensors"))
    n_batches = len({k.split(".")[0] for k in crops})
    n_groups = len(cfg["swav"]["nmb_crops"])
    batches = [[crops[f"b{b:02d}.g{g}"] for g in range(n_groups)] for b in range(n_batches)]
    torch.manual_seed(0)
    marks = sorted({x for st, n in SEGMENTS for x in (st, st + n)})
    model, losses, lrs, dumps = train(cfg, init, batches, False, 2, dump_at=marks)
    # The same run with other summation orders: what "the same" means in float32.
    variants = [(True, 1), (False, 1), (True, 2)]
    variant_losses = [train(cfg, init, batches, cl, th)[1] for cl, th in variants]
    other_losses = variant_losses[0]
    names = sorted(init)
    write_safetensors(os.path.join(FIXTURE, "final.safetensors"), export_ours(model, names))
    segments = []
    for st, length in SEGMENTS:
        weights, bufs = dumps[st]
        if st > 0:
            write_safetensors(os.path.join(FIXTURE, f"state_{st}.safetensors"), weights)
            write_safetensors(os.path.join(FIXTURE, f"momentum_{st}.safetensors"), bufs)
        end_weights = dumps[st + length][0]
        write_safetensors(os.path.join(FIXTURE, f"end_{st}.safetensors"), end_weights)
        # The same segment with the other summation order, from the same state.
        seg_model, seg, _, _ = train(cfg, weights, batches, True, 1, start=st, stop=st + length,
                                     momentum=bufs)
        seg_end = export_ours(seg_model, names)
        segments.append({
            "start": st,
            "length": length,
            "loss_other": seg,
            "weights_drift": {n: float((end_weights[n].double() - seg_end[n].double()).abs().max())
                              for n in names},
        })
    out = {
        "torch": torch.__version__,
        "iterations": len(losses),
        "loss": losses,
        "lr": lrs,
        "loss_other": other_losses,
        "variants": [f"{'channels-last' if cl else 'NCHW'}, {th} thread(s)" for cl, th in variants],
        "loss_variants": variant_losses,
        "segments": segments,
    }
    with open(os.path.join(FIXTURE, "trajectory.json"), "w") as f:
        json.dump(out, f, indent=0)
    d = [abs(a - b) for a, b in zip(losses, other_losses)]
    print(f"{len(losses)} iterations; loss {losses[0]:.5f} -> {losses[-1]:.5f}; "
          f"PyTorch vs PyTorch (other summation order): max loss difference over the first "
          f"10 / 20 / all iterations {max(d[:10]):.2g} / {max(d[:20]):.2g} / {max(d):.2g}")
    for seg in segments:
        st, n = seg["start"], seg["length"]
        dl = max(abs(a - b) for a, b in zip(losses[st:st + n], seg["loss_other"]))
        print(f"segment {st}..{st + n}: max loss difference {dl:.2g}, max weight difference "
              f"{max(seg['weights_drift'].values()):.2g}")


if __name__ == "__main__":
    main()
