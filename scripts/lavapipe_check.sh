#!/usr/bin/env bash
# The GPU code path without a GPU: Mesa's lavapipe (Vulkan on the CPU) runs the same wgpu build
# as a GPU would (autotune, fusion, SPIR-V kernels). Checks, each printed as PASS or FAIL:
#   1. a few SwAV steps of a narrow ResNet-18 from the same initial weights on the CPU backend
#      and on wgpu in f32 and with f16 autocast: the loss within 0.5 % of the CPU's;
#   2. a checkpoint written on wgpu resumes on the CPU, and one written on the CPU resumes on
#      wgpu (a short pretraining run stopped after a few iterations, then continued).
#
# Needs Mesa 25 or later (Debian 12: `apt-get install -t bookworm-backports
# mesa-vulkan-drivers`; 22.3 crashes compiling cubecl's SPIR-V) and the wgpu build:
#   cargo build -p xtask --features wgpu
# Run: bash scripts/lavapipe_check.sh [path to that xtask binary]
set -uo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
xtask="${1:-$target/debug/xtask}"
[ -x "$xtask" ] || { echo "no wgpu build at $xtask: cargo build -p xtask --features wgpu"; exit 2; }
icd=$(ls /usr/share/vulkan/icd.d/lvp_icd*.json 2>/dev/null | head -1)
[ -n "$icd" ] || { echo "no lavapipe ICD in /usr/share/vulkan/icd.d (mesa-vulkan-drivers)"; exit 2; }
export VK_DRIVER_FILES="${VK_DRIVER_FILES:-$icd}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
# Balanced autotuning on a software rasteriser takes tens of minutes per shape.
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SWAV_KERNEL_CACHE="$work/kernels"
failed=0

bench() {
    "$xtask" bench --arch resnet18 --cifar-stem --base-width 8 --crops 2x32 --batch 16 \
        --steps 2 --warmup 1 "$@" 2>"$work/bench.err" | tail -1
}
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
verdict() { if [ "$1" = 1 ]; then echo "PASS: $2"; else echo "FAIL: $2"; failed=1; fi; }

cpu=$(bench --device cpu) || { echo "FAIL: cpu bench"; cat "$work/bench.err"; exit 1; }
l_cpu=$(field "$cpu" loss)
echo "cpu: loss $l_cpu, backend $(field "$cpu" backend)"
for amp in "" "f16"; do
    line=$(bench --device wgpu ${amp:+--amp $amp}) || { verdict 0 "wgpu ${amp:-f32} bench ran"; tail -5 "$work/bench.err"; continue; }
    l=$(field "$line" loss)
    ok=$(python3 -c "print(int(abs($l - $l_cpu) <= 0.005 * abs($l_cpu)))")
    verdict "$ok" "wgpu ${amp:-f32}: loss $l vs cpu $l_cpu (within 0.5 %), backend $(field "$line" backend)"
done

# A short run: 128 images in batches of 32, 4 iterations per epoch, a checkpoint every 2.
run() {
    "$xtask" pretrain --fresh --quiet --no-baseline --out "$1" --device "$2" \
        --set epochs=2 --set data.shapes10_train=128 --set data.shapes10_test=64 \
        --set batch_size=32 --set run.checkpoint_every=2 --set run.knn_every=0 \
        "${@:3}" >"$work/run.log" 2>&1
}
for order in "wgpu cpu" "cpu wgpu"; do
    set -- $order
    dir="$work/resume-$1-$2"
    if run "$dir" "$1" --stop-after 3 && run "$dir" "$2" --set run.auto_resume=true; then
        it=$(python3 -c "import json; s=json.load(open('$dir/summary.json')); print(s['resumed_from_iteration'], s['iterations'], s['completed'])")
        verdict "$([ "$it" = "2 8 True" ] && echo 1 || echo 0)" "written on $1, resumed on $2 (from iteration, iterations, completed: $it)"
    else
        verdict 0 "written on $1, resumed on $2"
        tail -5 "$work/run.log"
    fi
done
[ "$failed" = 0 ] && echo "lavapipe check: all passed" || echo "lavapipe check: some failed"
exit "$failed"
