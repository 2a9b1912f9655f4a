#!/usr/bin/env bash
# The GPU step comparison of issues 6 and 8, as one device call: PyTorch's peer step
# (`torch_swav_step.py`) and `xtask bench --device wgpu` on the same shapes, on the same card.
#
# Prepare here (CPU machine), once per session that is lent a GPU:
#   echo /.dev/ >> .git/info/exclude; echo /.gl/ >> .git/info/exclude; mkdir -p .dev
#   cargo build --release -p xtask --features wgpu            # ~20 min cold
#   strip -o .dev/xtask $CARGO_TARGET_DIR/release/xtask && gzip -f .dev/xtask
#   the Vulkan loaders into .gl (device README, `.gl` recipe)
# Then one call: run(command="bash scripts/gpu_bench.sh", carry=[".dev", ".gl"], timeout_s=540).
# Everything it prints is also in $OUT/gpu_bench.log.
set -uo pipefail
out="${OUT:-/tmp}/gpu_bench.log"
exec > >(tee "$out") 2>&1
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
gunzip -kf .dev/xtask.gz && chmod +x .dev/xtask
nvidia-smi --query-gpu=name,memory.total --format=csv
t() { echo "== $*"; timeout 150 "$@"; echo "(exit $?)"; }
# ResNet-18 CIFAR stem, 2x32, batch 512; then ResNet-50, 2x224 + 6x96, batch 64.
t python3 scripts/peers/torch_swav_step.py --arch resnet18 --cifar-stem --batch 512 --crops 2x32 --steps 20 --warmup 5
t python3 scripts/peers/torch_swav_step.py --arch resnet18 --cifar-stem --batch 512 --crops 2x32 --steps 20 --warmup 5 --amp --channels-last
t .dev/xtask bench --device wgpu --arch resnet18 --cifar-stem --batch 512 --crops 2x32 --steps 10 --warmup 3
t .dev/xtask bench --device wgpu --arch resnet18 --cifar-stem --batch 512 --crops 2x32 --steps 10 --warmup 3 --amp f16
t python3 scripts/peers/torch_swav_step.py --arch resnet50 --batch 64 --crops 2x224,6x96 --steps 10 --warmup 3
t python3 scripts/peers/torch_swav_step.py --arch resnet50 --batch 64 --crops 2x224,6x96 --steps 10 --warmup 3 --amp --channels-last
t .dev/xtask bench --device wgpu --arch resnet50 --batch 64 --crops 2x224,6x96 --steps 5 --warmup 2
t .dev/xtask bench --device wgpu --arch resnet50 --batch 64 --crops 2x224,6x96 --steps 5 --warmup 2 --amp f16
