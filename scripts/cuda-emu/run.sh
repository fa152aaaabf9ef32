#!/usr/bin/env bash
# Checks kernels/cuda/gemm_q8.cu and gemm_f16.cu on a machine without a GPU: builds it as host C++ with
# every GPU thread a host thread, the warp-wide instructions of mma_s8.cuh emulated (this
# directory's copy replaces the real one), cp.async done at random times, and compares
# wick_gemm_q8 with a double-precision product of the decoded weights and activations.
# `run.sh matvec` does the same for kernels/cuda/matvec_q8.cu (matvec.cpp), and also checks
# that every row of a batch is bitwise the row computed alone, with cp.async and with
# Hopper's bulk copies (bulk_copy.cuh: mbarriers as host records, each copy landing at once
# or only at the first wait, at random).
# Usage: scripts/cuda-emu/run.sh [matvec] [type index 0..7] [quick | fold]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/../../kernels/cuda
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
cp "$src"/*.cuh "$src"/wick_cuda.h "$work/src/"
cp "$here/mma_s8.cuh" "$work/src/mma_s8.cuh"
cp "$here/stream.cuh" "$work/src/stream.cuh"
cp "$here/bulk_copy.cuh" "$work/src/bulk_copy.cuh"
# Launches go through this directory's stream.cuh (wick_launch runs emu_run); any k<<<cfg>>>(args)
# left in the source becomes emu_run(k, emu_cfg(cfg), args).
kernel=gemm_q8 harness=harness
if [ "${1:-}" = matvec ]; then
    kernel=matvec_q8 harness=matvec
    shift
fi
[ $kernel = gemm_q8 ] && cp "$src/gemm_f16.cu" "$work/src/"
perl -pe 's/(\w+)<<<(.*?)>>>\(/emu_run($1, emu_cfg($2), /' "$src/$kernel.cu" > "$work/src/$kernel.cu"
g++ -std=c++20 -O1 -g -fsanitize=address -Wno-unknown-pragmas -I"$here/inc" -I"$work/src" \
    "$here/$harness.cpp" -o "$work/harness" -lpthread
"$work/harness" "$@"
