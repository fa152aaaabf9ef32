#!/usr/bin/env bash
# Installs a CUDA 13.0 compiler and runtime from NVIDIA's PyPI wheels, for machines without a
# CUDA toolkit. Prints the CUDA_ROOT to build with:
#   export CUDA_ROOT=$(scripts/install-cuda.sh) && cargo build --release --features cuda
# Idempotent: an existing install with nvcc in place is kept.
set -euo pipefail

DIR="${WICK_CUDA_DIR:-$HOME/.cache/wick/cuda13}"
ROOT="$DIR/nvidia/cu13"
PY="${PYTHON:-python3}"

if [[ ! -x "$ROOT/bin/nvcc" || ! -f "$ROOT/lib/libcudart_static.a" || ! -d "$ROOT/include/nv" ]]; then
    echo "install-cuda: installing CUDA 13.0 wheels into $DIR" >&2
    rm -rf "$DIR"
    # All in one pip call: with --target, separate calls would replace each other's nvidia/.
    "$PY" -m pip install --quiet --no-deps --target "$DIR" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
        "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*" >&2
fi
[[ -x "$ROOT/bin/nvcc" ]] || { echo "install-cuda: nvcc missing after install" >&2; exit 1; }
echo "$ROOT"
