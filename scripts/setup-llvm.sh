#!/usr/bin/env bash
# Installs LLVM 23.1 where burn's CUDA build looks for it, from the Python package index instead
# of GitHub, so that `cargo build --release -p xtask --features cuda` works on a machine that
# reaches PyPI (or has the two wheels on disk) but not GitHub.
#
# Why: the CUDA backend compiles kernels to PTX through LLVM (cubecl-llvm). Its build script
# (tracel-llvm-bundler 23.1.0-4) downloads a prebuilt LLVM from GitHub into
#   ${XDG_DATA_HOME:-~/.local/share}/tracel/tracel-llvm-23.1.0-4/
# unless that folder already holds the file `.tracel-llvm-installed`; it then only asks the
# folder's `bin/llvm-config` for flags and static libraries. Users with access to GitHub need
# nothing from this script.
#
# What it installs: `mlc-llvm-static` 23.1.1 (static LLVM libraries, headers and an
# `llvm-config`) with `mlc-llvm-static-extra-targets` 23.1.1 (the NVPTX target among others),
# unpacked into that folder, then checks that `llvm-config` answers, that NVPTX is among its
# targets, and writes the sentinel.
#
# Usage: bash scripts/setup-llvm.sh [folder holding the two .whl files]
#   Without a folder the wheels are fetched with `pip download` (PyPI or the configured index).
#   SWAV_LLVM_PREFIX overrides the install folder (it must then match what the bundler computes:
#   the script prints the folder it uses).
set -euo pipefail

version=23.1.1
bundle=tracel-llvm-23.1.0-4
data_home="${XDG_DATA_HOME:-$HOME/.local/share}"
prefix="${SWAV_LLVM_PREFIX:-$data_home/tracel/$bundle}"
sentinel="$prefix/.tracel-llvm-installed"

if [ -f "$sentinel" ]; then
    echo "LLVM already installed for burn's CUDA build: $prefix"
    exit 0
fi
case "$(uname -s)-$(uname -m)" in
    Linux-x86_64) ;;
    *) echo "setup-llvm.sh: only Linux x86_64 wheels are known to work; on $(uname -s)-$(uname -m) let cargo download LLVM" >&2; exit 2 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
wheels="${1:-}"
if [ -z "$wheels" ]; then
    wheels="$work/wheels"
    echo "fetching mlc-llvm-static $version and its extra targets (about 95 MB) ..."
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$wheels" \
        --platform manylinux_2_28_x86_64 --python-version 3.11 \
        "mlc-llvm-static==$version" "mlc-llvm-static-extra-targets==$version"
fi
base=$(ls "$wheels"/mlc_llvm_static-"$version"-*.whl 2>/dev/null | head -1)
extra=$(ls "$wheels"/mlc_llvm_static_extra_targets-"$version"-*.whl 2>/dev/null | head -1)
[ -n "$base" ] || { echo "setup-llvm.sh: no mlc_llvm_static-$version wheel in $wheels" >&2; exit 1; }
[ -n "$extra" ] || { echo "setup-llvm.sh: no mlc_llvm_static_extra_targets-$version wheel in $wheels (NVPTX lives there)" >&2; exit 1; }

echo "unpacking into $prefix ..."
python3 -m zipfile -e "$base" "$work/unpacked"
python3 -m zipfile -e "$extra" "$work/unpacked"
sdk="$work/unpacked/mlc_llvm_static/static"
[ -f "$sdk/bin/llvm-config" ] || { echo "setup-llvm.sh: the wheel has no static/bin/llvm-config; its layout changed" >&2; exit 1; }
rm -rf "$prefix.partial"
mkdir -p "$(dirname "$prefix")"
cp -a "$sdk" "$prefix.partial"
chmod +x "$prefix.partial/bin/llvm-config"

# The bundler calls `llvm-config --link-static <flag>`; check what it will read.
config="$prefix.partial/bin/llvm-config"
got=$("$config" --link-static --version)
case "$got" in
    23.1.*) ;;
    *) echo "setup-llvm.sh: llvm-config reports version $got, not 23.1" >&2; exit 1 ;;
esac
"$config" --link-static --targets-built | tr ' ' '\n' | grep -qx NVPTX \
    || { echo "setup-llvm.sh: NVPTX is not among the installed targets" >&2; exit 1; }
[ -f "$prefix.partial/include/llvm-c/Target.h" ] || { echo "setup-llvm.sh: llvm-c headers missing" >&2; exit 1; }
"$config" --link-static --libs >/dev/null

rm -rf "$prefix"
mv "$prefix.partial" "$prefix"
touch "$sentinel"
echo "LLVM $got installed for burn's CUDA build in $prefix"
echo "now: cargo build --release -p xtask --features cuda"
