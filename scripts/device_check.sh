#!/usr/bin/env bash
# The prepared GPU run: one device call of at most 9 minutes that measures our SwAV step beside
# PyTorch's on the same card, and trains CIFAR-10 for the minutes left. It prints everything
# and writes JSON lines to $OUT/device_check.jsonl (one object per measurement, each with a
# "check" field) and the full log to $OUT/device_check.log.
#
# What it measures, in order (each step bounded by `timeout`, so a hang costs its share only):
#   1. the GPU's name and driver (nvidia-smi);
#   2. PyTorch's step, fp32 and AMP + channels-last, for ResNet-18 CIFAR 2x32 batch 512 and
#      ResNet-50 2x224 + 6x96 batch 64 (scripts/peers/torch_swav_step.py);
#   3. ours on wgpu (autotune, fusion, SPIR-V on Vulkan) in f32 and f16, on the same shapes:
#      images/s and the time to the first step, first with an empty kernel cache, then again
#      with the cache the first run filled (each JSON line names the live backend);
#   4. a CIFAR-10 pretraining run (ResNet-18, the cifar10 preset's recipe) on wgpu for the time
#      left, ending with its kNN accuracy against the same network at random initialisation.
#
# Prepare here (CPU machine), in the repository root:
#   echo /.dev/ >> .git/info/exclude; echo /.gl/ >> .git/info/exclude; mkdir -p .dev
#   cargo build --release -p xtask --features wgpu                        # ~20 min cold
#   strip -o .dev/xtask "${CARGO_TARGET_DIR:-target}/release/xtask" && gzip -f .dev/xtask
#   the Vulkan loaders into .gl (the device README's `.gl` recipe)
#   a CIFAR-10 JPEG tree as .dev/cifar10.tar.gz (train/ and test/ class folders; about 140 MB
#   unpacked, so carry a subset when the 64 MiB limit requires, e.g. 10,000 train images)
# Then one call: run(command="bash scripts/device_check.sh", carry=[".dev", ".gl"],
# timeout_s=560). The numbers go into docs/benchmarks.md beside PyTorch's from the same run.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
log="$out/device_check.log"
jsonl="$out/device_check.jsonl"
: > "$jsonl"
exec > >(tee "$log") 2>&1
budget_s="${DEVICE_CHECK_BUDGET_S:-530}"
start=$(date +%s)
left() { echo $(( budget_s - ($(date +%s) - start) )); }

if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
export VK_DRIVER_FILES="${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}"
export __EGL_VENDOR_LIBRARY_FILENAMES="${__EGL_VENDOR_LIBRARY_FILENAMES:-/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json}"
xtask=.dev/xtask
[ -x "$xtask" ] || { gunzip -kf .dev/xtask.gz && chmod +x "$xtask"; }

# One JSON line per measurement: the command's last output line when it is JSON, else a record
# of the failure.
record() {
    local check="$1"; shift
    local t0 line code
    t0=$(date +%s.%N)
    line=$(timeout "$1" "${@:2}" 2>"$out/last.err" | tail -1); code=$?
    python3 - "$check" "$code" "$t0" "$line" "$out/last.err" >> "$jsonl" <<'EOF'
import json, sys, time
check, code, t0, line, err = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
try:
    rec = json.loads(line)
except ValueError:
    rec = {"error": open(err).read()[-2000:]}
rec.update({"check": check, "exit": code, "wall_s": round(time.time() - t0, 1)})
print(json.dumps(rec))
EOF
    tail -1 "$jsonl"
}

echo "== GPU"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import json,sys; n,d,m=[x.strip() for x in open(sys.argv[1]).read().split(',')]; print(json.dumps({'check':'gpu','name':n,'driver':d,'memory':m}))" "$out/gpu.txt" >> "$jsonl"

r18="--arch resnet18 --cifar-stem --batch 512 --crops 2x32"
r50="--arch resnet50 --batch 64 --crops 2x224,6x96"
echo "== PyTorch peer"
record torch-r18-fp32 90 python3 scripts/peers/torch_swav_step.py $r18 --steps 20 --warmup 5
record torch-r18-amp-cl 90 python3 scripts/peers/torch_swav_step.py $r18 --steps 20 --warmup 5 --amp --channels-last
record torch-r50-fp32 90 python3 scripts/peers/torch_swav_step.py $r50 --steps 10 --warmup 3
record torch-r50-amp-cl 90 python3 scripts/peers/torch_swav_step.py $r50 --steps 10 --warmup 3 --amp --channels-last

echo "== swav-rs on wgpu: empty kernel cache, then the same cache again"
export SWAV_KERNEL_CACHE="$out/kernel-cache"
rm -rf "$SWAV_KERNEL_CACHE"
for pass in cold warm; do
    record "ours-r18-f32-$pass" 100 "$xtask" bench --device wgpu $r18 --steps 10 --warmup 3
    record "ours-r18-f16-$pass" 100 "$xtask" bench --device wgpu $r18 --steps 10 --warmup 3 --amp f16
    [ "$(left)" -gt 200 ] || break
    record "ours-r50-f32-$pass" 100 "$xtask" bench --device wgpu $r50 --steps 5 --warmup 2
    record "ours-r50-f16-$pass" 100 "$xtask" bench --device wgpu $r50 --steps 5 --warmup 2 --amp f16
done

echo "== CIFAR-10 pretraining on wgpu for the time left ($(left) s)"
if [ -f .dev/cifar10.tar.gz ] && [ "$(left)" -gt 90 ]; then
    mkdir -p "$out/cifar10" && tar xzf .dev/cifar10.tar.gz -C "$out/cifar10"
    data=$(dirname "$(find "$out/cifar10" -maxdepth 3 -type d -name train | head -1)")
    # `timeout` ends the run if it overruns; the record then lists the epochs it finished
    # (metrics.jsonl). Set DEVICE_CHECK_EPOCHS to what fits at the rate the benches measured.
    timeout $(( $(left) - 20 )) "$xtask" pretrain --config configs/cifar10.toml --data "$data" \
        --device wgpu --out "$out/cifar-run" --fresh --quiet --set run.knn_every=1 \
        --set epochs="${DEVICE_CHECK_EPOCHS:-10}" --set use_fp16=true
    python3 - "$out/cifar-run" >> "$jsonl" <<'EOF'
import json, os, sys
run = sys.argv[1]
rec = {"check": "cifar10-pretrain"}
try:
    s = json.load(open(os.path.join(run, "summary.json")))
    rec.update({k: s.get(k) for k in ("iterations", "time_s", "images_per_s", "knn", "knn_baseline", "backend", "precision")})
except (OSError, ValueError):
    lines = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))] if os.path.exists(os.path.join(run, "metrics.jsonl")) else []
    rec.update({"incomplete": True, "epochs": [l for l in lines if l.get("type") == "epoch"]})
print(json.dumps(rec))
EOF
    tail -1 "$jsonl"
else
    echo "(skipped: no .dev/cifar10.tar.gz or too little time left)"
fi
echo "== done in $(( $(date +%s) - start )) s; JSON lines in $jsonl"
