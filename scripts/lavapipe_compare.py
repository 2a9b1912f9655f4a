"""Compares an evaluation's JSON report written on the CPU with the same command's on wgpu
(scripts/lavapipe_check.sh): prints what it compared in one line and exits 1 when a figure is
past its tolerance.

    python3 scripts/lavapipe_compare.py knn-eval|linear-eval|assign|semisup CPU_DIR WGPU_DIR

What is compared, and within what:
- knn-eval: each (k, T)'s top-1 and top-5, within one test image (the features agree to about
  1e-6, so a neighbour can swap only at a tie);
- linear-eval: the last epoch's top-1 within two test images, every epoch's training loss within
  1e-3 relative (the classifier trains on the device in f32; summation order differs);
- assign: purity and the mean code confidence within 1e-3 relative, clusters used equal;
- semisup: every epoch's training loss within 2 % relative and the last top-1 within two test
  images per epoch (the backbone is fine-tuned on the device, and SGD amplifies rounding).
"""

import glob
import json
import sys


def report(folder, command):
    prefix = {"knn-eval": "knn", "linear-eval": "linear", "assign": "assign", "semisup": "semisup"}[command]
    files = sorted(glob.glob(f"{folder}/{prefix}_*.json"))
    if len(files) != 1:
        sys.exit(f"{folder}: expected one {prefix}_*.json report, found {files}")
    with open(files[0]) as f:
        return json.load(f)


def within(name, a, b, tolerance, relative=False, failures=None):
    diff = abs(a - b) / max(abs(b), 1e-30) if relative else abs(a - b)
    ok = diff <= tolerance
    if not ok:
        failures.append(f"{name} {a} vs {b} (difference {diff:.3g} > {tolerance:.3g})")
    return ok


def main():
    command, cpu_dir, gpu_dir = sys.argv[1:4]
    cpu, gpu = report(cpu_dir, command), report(gpu_dir, command)
    failures = []
    if command == "knn-eval":
        for c, g in zip(cpu["results"], gpu["results"], strict=True):
            image = 100.0 / c["test_samples"]
            within(f"k={c['config']['k']} top-1", g["top1"], c["top1"], image + 1e-9, failures=failures)
            within(f"k={c['config']['k']} top-5", g["top5"], c["top5"], image + 1e-9, failures=failures)
        line = ", ".join(f"k={c['config']['k']} top-1 {g['top1']:.2f} vs {c['top1']:.2f}"
                         for c, g in zip(cpu["results"], gpu["results"]))
    elif command == "linear-eval":
        c, g = cpu["result"], gpu["result"]
        image = 100.0 / c["test_samples"]
        within("last top-1", g["last"]["top1"], c["last"]["top1"], 2 * image + 1e-9, failures=failures)
        worst = 0.0
        for ce, ge in zip(c["epochs"], g["epochs"], strict=True):
            worst = max(worst, abs(ge["train_loss"] - ce["train_loss"]) / abs(ce["train_loss"]))
            within(f"epoch {ce['epoch']} loss", ge["train_loss"], ce["train_loss"], 1e-3, True, failures)
        line = f"top-1 {g['last']['top1']:.2f} vs {c['last']['top1']:.2f}, training loss within {worst:.1e}"
    elif command == "assign":
        within("purity", gpu["purity"], cpu["purity"], 1e-3, True, failures)
        within("mean confidence", gpu["mean_confidence"], cpu["mean_confidence"], 1e-3, True, failures)
        if gpu["clusters_used"] != cpu["clusters_used"]:
            failures.append(f"clusters used {gpu['clusters_used']} vs {cpu['clusters_used']}")
        line = (f"purity {gpu['purity']:.3f} vs {cpu['purity']:.3f}, clusters {gpu['clusters_used']} vs "
                f"{cpu['clusters_used']}, confidence {gpu['mean_confidence']:.4f} vs {cpu['mean_confidence']:.4f}")
    else:
        c, g = cpu["result"], gpu["result"]
        image = 100.0 / c["test_images"]
        worst = 0.0
        for ce, ge in zip(c["epochs"], g["epochs"], strict=True):
            worst = max(worst, abs(ge["train_loss"] - ce["train_loss"]) / abs(ce["train_loss"]))
            within(f"epoch {ce['epoch']} loss", ge["train_loss"], ce["train_loss"], 0.02, True, failures)
        within("last top-1", g["last_top1"], c["last_top1"], 2 * image * len(c["epochs"]) + 1e-9,
               failures=failures)
        line = f"top-1 {g['last_top1']:.2f} vs {c['last_top1']:.2f}, training loss within {worst:.1e}"
    if failures:
        print(line + "; " + "; ".join(failures))
        sys.exit(1)
    print(line)


if __name__ == "__main__":
    main()
