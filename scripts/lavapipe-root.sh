#!/usr/bin/env bash
# A Debian 13 (trixie) root with Mesa's lavapipe from trixie-backports (Mesa 26), for running the
# wgpu build on the CPU where no GPU is at hand. Older lavapipe (Mesa 22.3, and 25.0.7 from
# Debian 12's backports) crashes in vkCreateComputePipelines on cubecl's matmul kernels.
#
#   scripts/lavapipe-root.sh setup            build the root (idempotent: a no-op once built)
#   scripts/lavapipe-root.sh run CMD [ARG..]  run CMD inside it, in this repository's folder
#   scripts/lavapipe-root.sh info             what the root holds (Mesa version, vulkaninfo)
#
# The root lives in $LAVAPIPE_ROOT (default ~/.cache/swav-lavapipe-root; pass another folder to
# keep several). `setup` takes about 5 minutes and 600 MB on a fresh machine (debootstrap from
# Debian's packages, then mesa-vulkan-drivers and libvulkan1 from trixie-backports), nothing once
# built. The Debian mirror is the one this machine's apt uses (override: $LAVAPIPE_MIRROR).
#
# `run` works in a private mount namespace (unshare), so /proc, /dev, /sys, /tmp, this repository
# and the cargo target folder are bind-mounted for that command alone and vanish with it, also when it
# is killed; several runs can share the root at once. A binary built on the host (Debian 12 or
# later) runs inside: it finds libvulkan and lavapipe's ICD there. The environment it gets:
# VK_DRIVER_FILES pointing at lavapipe, XDG_RUNTIME_DIR, and CUBECL_AUTOTUNE_LEVEL=minimal
# (balanced autotuning on a software device takes tens of minutes per shape), each kept when
# already set. Needs root (debootstrap, chroot, mount).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
root="${LAVAPIPE_ROOT:-$HOME/.cache/swav-lavapipe-root}"
stamp="$root/.swav-lavapipe-ready"
suite=trixie
packages=(mesa-vulkan-drivers libvulkan1 vulkan-tools python3-minimal)

die() { echo "lavapipe-root: $*" >&2; exit 2; }

host_mirror() {
    if [ -n "${LAVAPIPE_MIRROR:-}" ]; then echo "$LAVAPIPE_MIRROR"; return; fi
    local uri
    uri=$(grep -hoE '^URIs: *[^ ]+/debian/?$' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
    [ -n "$uri" ] || uri=$(grep -hoE '^deb +[^ ]+/debian/? ' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
    [ -n "$uri" ] || die "no Debian mirror in this machine's apt sources; set LAVAPIPE_MIRROR"
    echo "${uri%/}"
}

setup() {
    [ "$(id -u)" = 0 ] || die "setup needs root (debootstrap, chroot)"
    if [ -f "$stamp" ]; then echo "lavapipe root ready at $root ($(cat "$stamp"))"; return; fi
    if ! command -v debootstrap > /dev/null; then
        echo "installing debootstrap from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap > /dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap > /dev/null; }
    fi
    local mirror
    mirror=$(host_mirror)
    echo "building the $suite root in $root from $mirror (about 5 minutes)"
    mkdir -p "$root"
    # debootstrap resumes a half-built root poorly: start a failed one again from empty.
    [ -e "$root/debootstrap" ] && { echo "an unfinished root is there: starting again"; rm -rf "${root:?}"/*; }
    if [ ! -x "$root/usr/bin/apt-get" ]; then
        debootstrap --variant=minbase "$suite" "$root" "$mirror" > "$root.debootstrap.log" 2>&1 \
            || { tail -20 "$root.debootstrap.log" >&2; die "debootstrap failed (log: $root.debootstrap.log)"; }
    fi
    rm -f "$root/etc/apt/sources.list"
    cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    in_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -t "$suite-backports" "${packages[@]}" > "$root.apt.log" 2>&1 \
        || { tail -20 "$root.apt.log" >&2; die "installing ${packages[*]} failed (log: $root.apt.log)"; }
    in_root apt-get clean
    local mesa
    mesa=$(in_root dpkg-query -W -f '${Version}' mesa-vulkan-drivers)
    echo "$suite, mesa-vulkan-drivers $mesa" > "$stamp"
    echo "lavapipe root ready at $root ($(cat "$stamp"))"
}

# Runs a command in the root with the mounts it needs, in a mount namespace of its own.
in_root() {
    local target="${CARGO_TARGET_DIR:-$repo/target}"
    mkdir -p "$target"
    unshare --mount --propagation private -- bash "$0" __mounted "$target" "$@"
}

# Inside the new mount namespace: the mounts, then the command in the root.
mounted() {
    local target="$1" dir shared
    shift
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --rbind /sys "$root/sys"
    for dir in /tmp "$repo" "$target"; do mkdir -p "$root$dir" && mount --bind "$dir" "$root$dir"; done
    if [ -d "$repo/../shared" ]; then
        shared="$(cd "$repo/../shared" && pwd)"
        mkdir -p "$root$shared" && mount --bind "$shared" "$root$shared"
    fi
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    exec chroot "$root" /usr/bin/env --chdir="$repo" \
        HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

run_in_root() {
    [ "$(id -u)" = 0 ] || die "run needs root (chroot, mount)"
    [ -f "$stamp" ] || die "no root at $root: run '$0 setup' first"
    [ $# -gt 0 ] || die "run needs a command"
    local icd=/usr/share/vulkan/icd.d/lvp_icd.json
    [ -f "$root$icd" ] || icd=$(cd "$root" && ls usr/share/vulkan/icd.d/lvp_icd*.json | head -1 | sed 's|^|/|')
    in_root env \
        VK_DRIVER_FILES="${VK_DRIVER_FILES:-$icd}" \
        XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-root}" \
        CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}" \
        CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}" \
        ${SWAV_KERNEL_CACHE:+SWAV_KERNEL_CACHE="$SWAV_KERNEL_CACHE"} \
        ${LP_NUM_THREADS:+LP_NUM_THREADS="$LP_NUM_THREADS"} \
        ${RUST_BACKTRACE:+RUST_BACKTRACE="$RUST_BACKTRACE"} \
        /bin/sh -c 'mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR" && exec "$@"' sh "$@"
}

case "${1:-}" in
    setup) setup ;;
    run) shift; run_in_root "$@" ;;
    __mounted) shift; mounted "$@" ;;
    info)
        [ -f "$stamp" ] || die "no root at $root: run '$0 setup' first"
        cat "$stamp"
        run_in_root vulkaninfo --summary ;;
    *) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
