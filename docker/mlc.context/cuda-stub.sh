#!/bin/sh
# Build a stub libcuda.so.1 exporting the CUDA driver symbols TVM's CUDA runtime library links against,
# each returning CUDA_ERROR_NO_DEVICE (100). With it, `import tvm` loads its CUDA module on a machine
# without a GPU driver, so relax.build for cuda compiles kernels to a real fatbin (nvcc) instead of
# embedding CUDA source. It is preloaded by the compile step only when no real libcuda.so.1 loads.
#   cuda-stub.sh <libtvm_runtime_cuda.so> <out dir>
set -eu
mkdir -p "$2"
nm -D --undefined-only "$1" | awk '$2 ~ /^cu[A-Z]/ {print $2}' | sed 's/@.*//' | sort -u \
  | awk '{print "int " $1 "(void) { return 100; }"}' > "$2/libcuda-stub.c"
gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$2/libcuda.so.1" "$2/libcuda-stub.c"
