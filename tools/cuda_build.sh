#!/usr/bin/env bash
# Builds `himmel` with `--features cuda` on a machine without the CUDA toolkit or a GPU, from
# NVIDIA's CUDA 13.0 wheels on PyPI: nvcc compiles candle's kernels, and the binary links
# against cuBLAS, cuRAND and a stand-in for the driver library (libcuda.so.1), which only
# names the driver's functions for the linker. It runs where an NVIDIA driver for CUDA 13
# (580 or newer) and the cuBLAS and cuRAND 13 libraries are on the library path (PyTorch's
# cu130 wheels carry them). Where the CUDA toolkit is installed, plain
# `cargo build --release -p himmel-cli --features cuda` does the same.
#
#   bash tools/cuda_build.sh [COMPUTE_CAPABILITY] [FEATURE]
#
# COMPUTE_CAPABILITY defaults to 90 (H100, H200; 80 is A100, 89 L4). FEATURE is `cuda` (the
# default) or `cudnn`, which adds cuDNN's convolutions (the autoencoder's): the binary then also
# needs libcudnn.so.9 on the library path (PyTorch's cu130 wheels carry it too), and links
# against a stand-in for it as for the driver.
#
# The toolkit goes to ${HIMMEL_CUDA_DIR:-/opt/himmel-cuda13}; the binary is
# target/release/himmel.
set -euo pipefail
cd "$(dirname "$0")/.."
cap="${1:-90}"
feature="${2:-cuda}"
case "$feature" in
  cuda | cudnn) ;;
  *) echo "tools/cuda_build.sh: FEATURE is cuda or cudnn, not '$feature'" >&2; exit 2 ;;
esac
dir="${HIMMEL_CUDA_DIR:-/opt/himmel-cuda13}"
root="$dir/nvidia/cu13"

if [ ! -x "$root/bin/nvcc" ]; then
  mkdir -p "$dir/wheels"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$dir/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
  for wheel in "$dir"/wheels/*.whl; do
    python3 -m zipfile -e "$wheel" "$dir"
  done
  chmod +x "$root"/bin/* "$root"/nvvm/bin/*
fi

# A library's functions as cudarc declares them, each an empty body: enough to link.
stand_in() { # NAME SONAME BINDINGS (cudarc's sys module that declares them)
  if [ ! -e "$root/lib/lib$1.so" ]; then
    cudarc="$(cargo metadata --format-version 1 --features himmel-cli/cuda \
      | python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))')"
    grep -o "pub unsafe fn cu[A-Za-z0-9_]*" "$(dirname "$cudarc")/src/$3" \
      | awk '{print "void " $4 "(void) {}"}' | sort -u > "$dir/lib$1_stub.c"
    gcc -shared -fPIC -Wl,-soname,"$2" -o "$root/lib/lib$1.so" "$dir/lib$1_stub.c"
  fi
}
stand_in cuda libcuda.so.1 driver/sys/mod.rs
if [ "$feature" = cudnn ]; then
  stand_in cudnn libcudnn.so.9 cudnn/sys/mod.rs
fi
for name in cublas cublasLt curand nvrtc cudart; do
  library="$(ls "$root/lib/lib$name.so."* | head -1)"
  ln -sf "$(basename "$library")" "$root/lib/lib$name.so"
done

PATH="$root/bin:$PATH" CUDA_HOME="$root" CUDA_COMPUTE_CAP="$cap" \
  cargo build --release -p himmel-cli --features "$feature"
echo "built target/release/himmel with $feature for compute capability $cap"
