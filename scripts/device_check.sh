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
#   3. ours on every engine that travelled, on the same shapes: wgpu (autotune, fusion, SPIR-V
#      on Vulkan) in f32 and f16 (.dev/xtask), CUDA in f32, bf16 and f16 (.dev/xtask-cuda):
#      images/s and the time to the first step, first with an empty kernel cache, then again
#      with the cache the first run filled (each JSON line names the live backend);
#   4. the loader's throughput on the machine's cores, both crop sets, on the CIFAR-10 tree;
#   5. a CIFAR-10 pretraining run (ResNet-18, the cifar10 preset's recipe) on the fastest
#      engine that travelled (CUDA, else wgpu) for the time left, ending with its kNN accuracy
#      against the same network at random initialisation.
#
# Prepare here (CPU machine), in the repository root (.dev and .gl are ignored by git):
#   mkdir -p .dev
#   cargo build --release -p xtask --features cuda         # offline: scripts/setup-llvm.sh first
#   strip -o .dev/xtask-cuda "${CARGO_TARGET_DIR:-target}/release/xtask" && gzip -f .dev/xtask-cuda
#   and/or the wgpu build (about 20 min cold) as .dev/xtask.gz, with the Vulkan loaders in .gl
#   (the device README's `.gl` recipe);
#   a CIFAR-10 JPEG tree as .dev/cifar10.tar.gz (train/ and test/ class folders; about 140 MB
#   unpacked, so carry a subset when the 64 MiB limit requires, e.g. 10,000 train images).
# The stripped, gzipped CUDA binary is about 58 MB: with the wgpu one it exceeds the 64 MiB a
# call carries, so each engine travels in a call of its own (the script measures what is there).
# Then: run(command="bash scripts/device_check.sh", carry=[".dev"(, ".gl")], timeout_s=560).
# The numbers go into docs/benchmarks.md beside PyTorch's from the same run.
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
# The engines that travelled: name, binary, devices.
engines=()
for b in xtask xtask-cuda; do
    [ -x ".dev/$b" ] || { [ -f ".dev/$b.gz" ] && gunzip -kf ".dev/$b.gz" && chmod +x ".dev/$b"; }
done
[ -x .dev/xtask ] && engines+=("wgpu")
[ -x .dev/xtask-cuda ] && engines+=("cuda")
bin_of() { if [ "$1" = cuda ]; then echo .dev/xtask-cuda; else echo .dev/xtask; fi; }
[ "${#engines[@]}" -gt 0 ] || { echo "no binary in .dev (xtask.gz or xtask-cuda.gz)"; exit 2; }

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

for engine in "${engines[@]}"; do
    xtask=$(bin_of "$engine")
    case "$engine" in
        cuda) precisions="f32 bf16 f16" ;;
        *) precisions="f32 f16" ;;
    esac
    echo "== swav-rs on $engine: empty kernel cache, then the same cache again"
    export SWAV_KERNEL_CACHE="$out/kernel-cache-$engine"
    rm -rf "$SWAV_KERNEL_CACHE"
    for pass in cold warm; do
        for p in $precisions; do
            amp=(); [ "$p" = f32 ] || amp=(--amp "$p")
            record "ours-$engine-r18-$p-$pass" 100 "$xtask" bench --device "$engine" $r18 --steps 10 --warmup 3 "${amp[@]}"
        done
        [ "$(left)" -gt 240 ] || break
        for p in $precisions; do
            amp=(); [ "$p" = f32 ] || amp=(--amp "$p")
            record "ours-$engine-r50-$p-$pass" 100 "$xtask" bench --device "$engine" $r50 --steps 5 --warmup 2 "${amp[@]}"
        done
    done
done

data=""
if [ -f .dev/cifar10.tar.gz ]; then
    mkdir -p "$out/cifar10" && tar xzf .dev/cifar10.tar.gz -C "$out/cifar10"
    data=$(dirname "$(find "$out/cifar10" -maxdepth 3 -type d -name train | head -1)")
    echo "== the loader on $(nproc) cores, both crop sets"
    xtask=$(bin_of "${engines[0]}")
    record loader-2x32 60 "$xtask" bench --loader "$data" --augment cifar --crops 2x32 --batch 512 --steps 40 --warmup 5
    record loader-2x224-6x96 90 "$xtask" bench --loader "$data" --augment swav --crops 2x224,6x96 --batch 64 --steps 30 --warmup 5
fi

fastest="${engines[-1]}"
xtask=$(bin_of "$fastest")
echo "== CIFAR-10 pretraining on $fastest for the time left ($(left) s)"
if [ -n "$data" ] && [ "$(left)" -gt 90 ]; then
    # `timeout` ends the run if it overruns; the record then lists the epochs it finished
    # (metrics.jsonl). Set DEVICE_CHECK_EPOCHS to what fits at the rate the benches measured.
    timeout $(( $(left) - 20 )) "$xtask" pretrain --config configs/cifar10.toml --data "$data" \
        --device "$fastest" --out "$out/cifar-run" --fresh --quiet --set run.knn_every=1 \
        --set epochs="${DEVICE_CHECK_EPOCHS:-10}" --set use_fp16=true \
        --set half_type="\"$([ "$fastest" = cuda ] && echo bf16 || echo f16)\""
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
