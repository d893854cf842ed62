#!/usr/bin/env bash
# A CUDA 13.0 toolkit for building `--features cuda` on a machine without one (and without a GPU):
# nvcc, headers and the link-time libraries from NVIDIA's PyPI wheels, in a local prefix.
#
#   scripts/cuda-toolkit.sh            # installs once into ~/.cache/squish/cuda (about 1 GB)
#   source scripts/cuda-toolkit.sh env # exports PATH, CUDA_HOME, CUDA_COMPUTE_CAP, LIBRARY_PATH
#   cargo build --release -p squish --features cuda
#
# Pinned to CUDA 13.0 on purpose: PTX from a newer nvcc does not load on a 13.0 driver. The
# binary links libcuda dynamically (the host driver's, at run time); no wheel ships a libcuda
# link stub, so one is generated from the driver symbols cudarc declares (it answers "no
# device", so the binary also starts here and runs on the CPU). On the GPU machine
# run with LD_LIBRARY_PATH pointing at the CUDA 13 libraries (cuBLAS, cuRAND, NVRTC).
set -euo pipefail
PREFIX="${SQUISH_CUDA_PREFIX:-$HOME/.cache/squish/cuda}"
CAP="${CUDA_COMPUTE_CAP:-90}"

export_env() {
  export CUDA_HOME="$PREFIX/nvidia/cu13" CUDA_ROOT="$PREFIX/nvidia/cu13" CUDA_PATH="$PREFIX/nvidia/cu13"
  export PATH="$CUDA_HOME/bin:$PATH" CUDA_COMPUTE_CAP="$CAP"
  export LIBRARY_PATH="$PREFIX/stubs:$CUDA_HOME/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
}

if [ "${1:-}" = env ]; then
  export_env
  return 0 2>/dev/null || exit 0
fi

if [ ! -x "$PREFIX/nvidia/cu13/bin/nvcc" ]; then
  echo "installing the CUDA 13.0 toolkit wheels into $PREFIX"
  python3 -m pip install -q --no-deps --target "$PREFIX" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
    'nvidia-cublas>=13.0,<13.1' 'nvidia-curand>=10.4,<10.5'
fi

CU="$PREFIX/nvidia/cu13"
# The wheels ship versioned sonames only; the linker looks for lib<name>.so.
for l in "$CU"/lib/lib*.so.*; do
  base="${l%%.so.*}.so"
  [ -e "$base" ] || ln -s "$(basename "$l")" "$base"
done
# nvcc expects its nvvm tree beside bin/ (the nvvm wheel installs it under the same cu13 dir).
[ -d "$CU/nvvm" ] || { echo "nvvm missing under $CU" >&2; exit 1; }

# libcuda link stub: every cu* function cudarc's driver bindings declare, each answering
# CUDA_ERROR_NO_DEVICE (100), so a binary started here with the stub reports no GPU.
STUBS="$PREFIX/stubs"
if [ ! -e "$STUBS/libcuda.so" ]; then
  mkdir -p "$STUBS"
  ver="$(grep -A1 '^name = "cudarc"' "$(dirname "$0")/../Cargo.lock" | sed -n 's/^version = "\(.*\)"/\1/p')"
  (cd "$(dirname "$0")/.." && cargo fetch -q)
  src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$ver" | head -1)"
  grep -rhoE '^ *fn cu[A-Za-z0-9_]+' "$src/src/driver/sys" | sed 's/^ *fn //' | sort -u |
    sed 's/.*/int &(void) { return 100; }/' > "$STUBS/cuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUBS/libcuda.so" "$STUBS/cuda_stub.c"
  ln -sf libcuda.so "$STUBS/libcuda.so.1"  # lets the binary start here too (it then runs on the CPU)
fi
echo "CUDA toolkit ready: source scripts/cuda-toolkit.sh env"
