#!/usr/bin/env bash
# Checks single-row attention (kernels/cuda/attention_split.cuh, and attention.cu's former
# kernel with "old") on a machine without a GPU: builds attention.cu as host C++ with every
# GPU thread a host thread and the warp shuffles emulated, and compares it with
# double-precision attention over random f16, Q8_0 and fp8 caches (attention.cpp).
# Usage: scripts/cuda-emu/run-attention.sh [old|new [case index, or index- for it onwards]]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/../../kernels/cuda
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
cp "$src"/*.cuh "$src"/wick_cuda.h "$src/attention.cu" "$work/src/"
cp "$here/mma_s8.cuh" "$work/src/mma_s8.cuh"
cp "$here/stream.cuh" "$work/src/stream.cuh"
# Warp reductions in one exchange rather than five (emu_butterfly: the same additions).
perl -0pi -e 's/(inline float warp_(sum|max)\(float x\) \{).*?return x;\n\}/$1 return emu_warp_$2(x); }/sg' \
    "$work/src/common.cuh"
grep -q 'return emu_warp_sum' "$work/src/common.cuh" || { echo "warp_sum not replaced" >&2; exit 1; }
g++ -std=c++20 -O1 -g -fsanitize=address -Wno-unknown-pragmas -I"$here/inc" -I"$work/src" \
    "$here/attention.cpp" -o "$work/harness" -lpthread
"$work/harness" "$@"
