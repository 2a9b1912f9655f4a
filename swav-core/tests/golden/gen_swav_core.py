"""Writes swav_core.json: golden values for swav-core's Sinkhorn, loss and queue tests.

An independent reference in NumPy (float64) that follows the original
facebookresearch/swav `main_swav.py` (`distributed_sinkhorn` with world size 1, the
swapped-prediction loss and the queue handling of `train`) line by line, without the
max-subtraction our Rust code adds: in float64, exp(100) does not overflow, so the cases
where plain float32 exp would overflow are still computed exactly here.

Run:  python3 swav-core/tests/golden/gen_swav_core.py   (needs numpy)
The Rust tests only read the JSON; they never run Python.
"""

import json
import os

import numpy as np

rng = np.random.default_rng(2020)


def l2n(x, axis=1):
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def sinkhorn(out, epsilon, iters):
    # The original, world size 1: Q = exp(out / eps).T, then alternate normalisations.
    q = np.exp(out / epsilon).T
    b = q.shape[1]
    k = q.shape[0]
    q = q / np.sum(q)
    for _ in range(iters):
        q = q / np.sum(q, axis=1, keepdims=True)
        q = q / k
        q = q / np.sum(q, axis=0, keepdims=True)
        q = q / b
    q = q * b
    return q.T


def log_softmax(x):
    m = np.max(x, axis=1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=1, keepdims=True))


def swapped_loss(scores, bs, n_crops, crops_for_assign, temperature, codes):
    loss = 0.0
    for i, crop_id in enumerate(crops_for_assign):
        q = codes[i]
        sub = 0.0
        for v in np.delete(np.arange(n_crops), crop_id):
            x = scores[bs * v: bs * (v + 1)] / temperature
            sub -= np.mean(np.sum(q * log_softmax(x), axis=1))
        loss += sub / (n_crops - 1)
    return loss / len(crops_for_assign)


def cosine_scores(b, k, d, scale=1.0):
    z = l2n(rng.standard_normal((b, d)))
    p = l2n(rng.standard_normal((k, d)))
    return scale * (z @ p.T)


def flat(a):
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


out = {"sinkhorn": [], "loss": [], "queue": []}

# Sinkhorn: several B, K, epsilon and iteration counts, and two cases where
# exp(score / epsilon) overflows float32 (score / epsilon up to 100 > 88.7).
# In two dimensions the best cosine is close to 1, so those cases reach score / eps > 89.
for b, k, d, eps, iters, scale in [
    (8, 5, 16, 0.05, 3, 1.0),
    (16, 10, 16, 0.05, 3, 1.0),
    (32, 7, 16, 0.1, 5, 1.0),
    (4, 12, 16, 0.03, 1, 1.0),
    (64, 30, 16, 0.05, 10, 1.0),
    (128, 50, 16, 0.05, 3, 1.0),
    (12, 6, 2, 0.01, 3, 1.0),
    (10, 4, 2, 0.05, 3, 5.0),
]:
    s = cosine_scores(b, k, d, scale)
    out["sinkhorn"].append({
        "b": b, "k": k, "epsilon": eps, "iterations": iters,
        "max_score_over_epsilon": float(np.max(s) / eps),
        "scores": flat(s), "codes": flat(sinkhorn(s, eps, iters)),
    })

# Swapped-prediction loss over several crops, one prototype head.
for bs, k, n_crops, cfa, temp, eps in [
    (6, 5, 4, [0, 1], 0.1, 0.05),
    (8, 9, 3, [0], 0.1, 0.05),
    (5, 7, 8, [0, 1], 0.2, 0.03),
]:
    s = cosine_scores(bs * n_crops, k, 12)
    codes = [sinkhorn(s[bs * c: bs * (c + 1)], eps, 3) for c in cfa]
    out["loss"].append({
        "batch": bs, "k": k, "n_crops": n_crops, "crops_for_assign": cfa,
        "temperature": temp, "epsilon": eps, "iterations": 3,
        "scores": flat(s), "codes": [flat(c) for c in codes],
        "loss": float(swapped_loss(s, bs, n_crops, cfa, temp, codes)),
    })

# The queue path, exactly as train() in main_swav.py orders it: for each assignment crop,
# the stored embeddings are scored with the *current* prototypes and prepended once the
# queue is full (its last row non-zero), then the queue shifts and takes this batch's
# embeddings, then the codes are the last `bs` rows of the Sinkhorn output.
bs, d, k, n_crops, cfa, qlen, temp, eps, steps = 4, 8, 6, 3, [0, 1], 12, 0.1, 0.05, 6
queue = np.zeros((len(cfa), qlen, d))
use_the_queue = False
for step in range(steps):
    protos = l2n(rng.standard_normal((k, d)))  # new prototypes each step
    emb = l2n(rng.standard_normal((bs * n_crops, d)))
    scores = emb @ protos.T
    codes = []
    used = []
    for i, crop_id in enumerate(cfa):
        o = scores[bs * crop_id: bs * (crop_id + 1)]
        if use_the_queue or not np.all(queue[i, -1, :] == 0):
            use_the_queue = True
            o = np.concatenate((queue[i] @ protos.T, o))
        used.append(use_the_queue)
        queue[i, bs:] = queue[i, :-bs].copy()
        queue[i, :bs] = emb[crop_id * bs: (crop_id + 1) * bs]
        codes.append(sinkhorn(o, eps, 3)[-bs:])
    out["queue"].append({
        "step": step, "batch": bs, "dim": d, "k": k, "n_crops": n_crops,
        "crops_for_assign": cfa, "queue_length": qlen, "temperature": temp,
        "epsilon": eps, "iterations": 3,
        "prototypes": flat(protos), "embeddings": flat(emb),
        "queue_used": used, "codes": [flat(c) for c in codes],
        "loss": float(swapped_loss(scores, bs, n_crops, cfa, temp, codes)),
    })

path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "swav_core.json")
with open(path, "w") as f:
    json.dump(out, f)
print("wrote", path)
