#!/usr/bin/env bash
# Download the wheels tools/gpu_docs.sh installs on a GPU machine without internet.
#
#   tools/fetch_gpu_wheels.sh [DIR]      (default: .whl/ in the repository, git-ignored)
#
# Reads tools/gpu_wheels.txt (NAME==VERSION per line) and downloads each wheel, without its
# dependencies (the list already holds them), for CPython 3.12 on manylinux x86_64 (pure-Python
# wheels fit any platform). Wheels already in DIR are kept. Fails when a wheel cannot be had or
# when the folder passes 60 MiB (what a device run may carry with the repository).
# Environment: PYTHON (default python3), GPU_WHEELS_PYTHON_VERSION (default 3.12),
# GPU_WHEELS_LIST (default tools/gpu_wheels.txt).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${1:-$ROOT/.whl}"
LIST="${GPU_WHEELS_LIST:-$ROOT/tools/gpu_wheels.txt}"
PYTHON="${PYTHON:-python3}"
PYVER="${GPU_WHEELS_PYTHON_VERSION:-3.12}"
LIMIT_MIB=60

mkdir -p "$DIR"
count=0
while read -r spec; do
    spec="${spec%%#*}"
    spec="$(echo "$spec" | tr -d '[:space:]')"
    [ -z "$spec" ] && continue
    count=$((count + 1))
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --python-version "$PYVER" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$DIR" "$spec"
done < "$LIST"

size_kib="$(du -sk "$DIR" | cut -f1)"
echo "fetch_gpu_wheels: $count wheels listed, $(ls "$DIR"/*.whl | wc -l) in $DIR," \
    "$((size_kib / 1024)) MiB"
if [ "$size_kib" -gt $((LIMIT_MIB * 1024)) ]; then
    echo "fetch_gpu_wheels: $DIR holds more than $LIMIT_MIB MiB (stale wheels? remove it and" \
        "fetch again)" >&2
    exit 1
fi
