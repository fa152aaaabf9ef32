#!/usr/bin/env bash
# Checks kernels/cuda/spec_sample.cu on a machine without a GPU: builds it as host C++ with
# every GPU thread a host thread (spec_sample.cpp) and compares each kernel with the CPU's
# sampling and acceptance rules on the same seeded random numbers.
# Also plain decoding's sampled pick (wick_plain_sample, wick_mask_logits).
# Usage: scripts/cuda-emu/run-spec-sample.sh [threads a block (64)] [trials (60)]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$here/../../kernels/cuda
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
cp "$src/spec_sample.cu" "$src/wick_cuda.h" "$work/src/"
cp "$here/stream.cuh" "$work/src/stream.cuh"
g++ -std=c++20 -O1 -g -fsanitize=address,undefined -Wno-unknown-pragmas -I"$here/inc" \
    -I"$work/src" "$here/spec_sample.cpp" -o "$work/harness" -lpthread
"$work/harness" "$@"
