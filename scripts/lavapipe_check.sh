#!/usr/bin/env bash
# The GPU code path without a GPU: Mesa's lavapipe (Vulkan on the CPU, Mesa 26 from a Debian 13
# root, scripts/lavapipe-root.sh) runs the wgpu build as a GPU would (SPIR-V kernels, autotune,
# fusion), and each check compares it with the CPU backend. Every check prints PASS or FAIL:
#   1. one training step (narrow ResNet-18, CIFAR stem, 2x32 crops, batch 16, 256 prototypes)
#      on wgpu in f32, f16 and bf16 against the CPU in f32 (`xtask step-check`): the loss, the
#      codes and every gradient, within the tolerances of step_check.rs (measured; the numbers
#      are in docs/benchmarks.md). f16 runs in the build without autotune (with it, lavapipe
#      compiles every candidate kernel: over 20 minutes); bf16 crashes inside this Mesa, which
#      the check names as a known fault instead of passing it;
#   2. the same f32 step in a build without kernel fusion and in one without autotune, so that a
#      difference can be located;
#   3. two wgpu workers sharing the adapter with synchronised BatchNorm against two CPU workers;
#   4. linear-eval, knn-eval, assign and semisup with --device wgpu against the same command on
#      the CPU, on a checkpoint trained here: accuracies, purity and losses compared;
#   5. the kernel cache: the first step of a second run against the first;
#   6. a checkpoint written on wgpu resumes on the CPU, and one written on the CPU on wgpu.
#
#   bash scripts/lavapipe_check.sh --build   build the three binaries (host), then check
#   bash scripts/lavapipe_check.sh           check with the binaries already built
#   LAVAPIPE_CHECK_ONLY="step variants workers evals cache resume" (any of them): some checks
#
# As root without a lavapipe ICD on the host, the checks run inside the root that
# scripts/lavapipe-root.sh builds (it builds it first when missing). The binaries are
# target/lavapipe/xtask{,-no-fusion,-no-autotune} (CARGO_TARGET_DIR is honoured): the dev profile
# of `--features wgpu`, `--features wgpu-bare,gpu-autotune` and `--features wgpu-bare,gpu-fusion`.
# Time on two cores: the checks take about 7 minutes (printed at the end; docs/benchmarks.md has
# a measured run), the three builds a few minutes each on a warm target folder (about 20 for the
# first from cold).
set -uo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-$PWD/target}"
bins="$target/lavapipe"

if [ "${1:-}" = "--build" ]; then
    shift
    mkdir -p "$bins"
    for variant in ":wgpu" "-no-fusion:wgpu-bare,gpu-autotune" "-no-autotune:wgpu-bare,gpu-fusion"; do
        suffix="${variant%%:*}" features="${variant#*:}"
        echo "building xtask --features $features"
        cargo build -q -p xtask --features "$features" || exit 2
        cp "$target/debug/xtask" "$bins/xtask$suffix"
    done
fi

if [ -z "${SWAV_IN_LAVAPIPE_ROOT:-}" ] && ! ls /usr/share/vulkan/icd.d/lvp_icd*.json > /dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { echo "no lavapipe ICD here; as root the check runs in the Debian 13 root (scripts/lavapipe-root.sh)"; exit 2; }
    bash scripts/lavapipe-root.sh setup || exit 2
    SWAV_IN_LAVAPIPE_ROOT=1 exec bash scripts/lavapipe-root.sh run \
        env SWAV_IN_LAVAPIPE_ROOT=1 ${LAVAPIPE_CHECK_ONLY:+LAVAPIPE_CHECK_ONLY="$LAVAPIPE_CHECK_ONLY"} \
        bash scripts/lavapipe_check.sh "$@"
fi

xtask="$bins/xtask"
for b in xtask xtask-no-fusion xtask-no-autotune; do
    [ -x "$bins/$b" ] || { echo "missing $bins/$b: bash scripts/lavapipe_check.sh --build"; exit 2; }
done
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
known=""
started=$(date +%s)

verdict() { if [ "$1" = 1 ]; then echo "PASS: $2"; else echo "FAIL: $2"; failed=1; fi; }
# Whether check $1 is asked for (LAVAPIPE_CHECK_ONLY="step evals ..." runs some; default all).
wanted() { [ -z "${LAVAPIPE_CHECK_ONLY:-}" ] || [[ " $LAVAPIPE_CHECK_ONLY " == *" $1 "* ]]; }
# field JSON KEY: one value of a JSON line.
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
elapsed() { echo "$(( $(date +%s) - $1 )) s"; }
mesa_version() { dpkg-query -W -f '${Version}' mesa-vulkan-drivers 2>/dev/null || echo unknown; }

# One step on the checked side against the CPU; $1 names it, $2 is the binary, the rest options.
step_check() {
    local name="$1" bin="$2" t line
    shift 2
    t=$(date +%s)
    line=$("$bin" step-check "$@" 2>"$work/step.err" | tail -1)
    local status=$?
    if [ "$status" = 139 ] && [ -n "${KNOWN_CRASH:-}" ]; then
        echo "KNOWN FAULT (not passed): $name: a segmentation fault, $KNOWN_CRASH ($(elapsed "$t"))"
        known="$known
  $name: $KNOWN_CRASH"
        return
    fi
    if [ -z "$line" ] || [ "${line:0:1}" != "{" ]; then
        verdict 0 "$name: no result, exit status $status ($(elapsed "$t"))"
        tail -5 "$work/step.err"
        return
    fi
    echo "$line" > "$work/step-$name.json"
    local summary
    summary=$(python3 - "$line" <<'EOF'
import json, sys
r = json.loads(sys.argv[1])
print(f"loss {r['loss']:.6f} vs {r['reference_loss']:.6f} (rel {r['loss_rel']:.1e}), codes max diff "
      f"{r['codes_max_abs']:.1e}, gradients rel {r['grads_rel']:.1e}, worst {r['worst_gradient']} "
      f"{r['worst_gradient_rel']:.1e}; {r['backend']}, autotune {r['gpu_build']['autotune']}")
EOF
)
    verdict "$([ "$status" = 0 ] && echo 1 || echo 0)" "$name: $summary ($(elapsed "$t"))"
    [ "$status" = 0 ] || grep -m3 "differs" "$work/step.err"
}

if wanted step; then
    step_check "wgpu f32" "$xtask" --device wgpu
    # f16 in the build without autotune: with autotune, lavapipe's LLVM compiles every f16
    # candidate kernel of every shape (over 20 minutes for this step; f32 takes one).
    step_check "wgpu f16 (build without autotune)" "$bins/xtask-no-autotune" --device wgpu --amp f16
    known="$known
  wgpu f16 with autotune: not run (lavapipe compiles every candidate kernel: over 20 minutes)"
    # Mesa 26.1.6's lavapipe offers SPV_KHR_bfloat16 and crashes in the first bf16 kernel
    # (cubecl's vectorised f32 -> bf16 OpFConvert); said as such, so a fixed Mesa shows up.
    KNOWN_CRASH="in lavapipe's first bf16 kernel (a vectorised f32 -> bf16 conversion; Mesa $(mesa_version))" \
        step_check "wgpu bf16" "$xtask" --device wgpu --amp bf16
fi
if wanted variants; then
    step_check "wgpu f32 without fusion" "$bins/xtask-no-fusion" --device wgpu
    step_check "wgpu f32 without autotune" "$bins/xtask-no-autotune" --device wgpu
fi
if wanted workers; then
    step_check "2 wgpu workers, synchronised BatchNorm" "$xtask" --workers 2 --devices wgpu,wgpu --sync-bn --batch 8
fi

# A checkpoint to evaluate: trained on the CPU (256 Shapes10 images, 2 epochs).
ckpt="$work/ckpt"
if wanted evals; then
    "$xtask" pretrain --fresh --quiet --no-baseline --out "$ckpt" --device cpu \
        --set epochs=2 --set data.shapes10_train=256 --set data.shapes10_test=128 \
        --set batch_size=32 --set run.knn_every=0 > "$work/ckpt.log" 2>&1 \
        || { verdict 0 "a checkpoint to evaluate"; tail -5 "$work/ckpt.log"; }
    evaluate() {
        local dev="$1" cmd="$2"
        shift 2
        "$xtask" "$cmd" --checkpoint "$ckpt" --device "$dev" --out "$work/eval-$dev" \
            --extract-batch 64 "$@" > "$work/$cmd-$dev.log" 2>&1
    }
    for spec in "knn-eval" "linear-eval --epochs 10" "assign" "semisup --fraction 0.25 --epochs 2 --batch-size 32"; do
        cmd="${spec%% *}"
        args=""
        [ "$cmd" != "$spec" ] && args="${spec#* }"
        t=$(date +%s)
        # shellcheck disable=SC2086
        if evaluate cpu "$cmd" $args && evaluate wgpu "$cmd" $args; then
            out=$(python3 scripts/lavapipe_compare.py "$cmd" "$work/eval-cpu" "$work/eval-wgpu")
            verdict "$([ $? = 0 ] && echo 1 || echo 0)" "$cmd on wgpu vs cpu: $out ($(elapsed "$t"))"
        else
            verdict 0 "$cmd on wgpu vs cpu ran ($(elapsed "$t"))"
            tail -5 "$work/$cmd-cpu.log" "$work/$cmd-wgpu.log"
        fi
    done
fi

if wanted cache; then
    cold="$work/cold-cache"
    first() {
        SWAV_KERNEL_CACHE="$cold" "$xtask" bench --device wgpu --arch resnet18 --cifar-stem \
            --base-width 8 --crops 2x32 --batch 16 --steps 1 --warmup 0 2>/dev/null | tail -1
    }
    a=$(first) && b=$(first)
    if [ -n "$a" ] && [ -n "$b" ]; then
        s1=$(field "$a" first_step_s); s2=$(field "$b" first_step_s)
        ok=$(python3 -c "print(int($s2 < $s1))")
        verdict "$ok" "kernel cache: first step ${s1} s in a fresh cache, ${s2} s in the second run"
    else
        verdict 0 "kernel cache: the two bench runs"
    fi
fi

# A short run: 128 images in batches of 32, 4 iterations per epoch, a checkpoint every 2.
run() {
    "$xtask" pretrain --fresh --quiet --no-baseline --out "$1" --device "$2" \
        --set epochs=2 --set data.shapes10_train=128 --set data.shapes10_test=64 \
        --set batch_size=32 --set run.checkpoint_every=2 --set run.knn_every=0 \
        "${@:3}" >"$work/run.log" 2>&1
}
if wanted resume; then
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
fi
echo "lavapipe check: $(elapsed "$started") in all"
[ -z "$known" ] || echo "not checked here, with the reason:$known"
[ "$failed" = 0 ] && echo "lavapipe check: all passed" || echo "lavapipe check: some failed"
exit "$failed"
