#!/bin/sh
# Compile TVM's web runtime (wasm_runtime, tvmjs_support, webgpu_runtime) from the installed apache-tvm wheel
# with emcc, as TVM's web/Makefile does, into $1 (default /opt/tvm-web/dist/wasm). The wheel lacks TVM's
# support headers: the ones written here (support_io.h, support_serializer.h, bytes_io.h, base64.h, ring_buffer.h, arena.h, utils.h, nvtx.h, builtin_fp16.h) fill them in.
# Usage: build-web-runtime.sh [out-dir]
set -eu
here=$(dirname "$0")  # the headers written for the wheel lie next to this script
out=${1:-/opt/tvm-web/dist/wasm}
site=$(python -c 'import os, tvm; print(os.path.dirname(os.path.dirname(tvm.__file__)))')
root=/opt/tvm-web  # TVM_ROOT layout the web sources include from
# copies, not links: the sources include siblings by relative paths ("../../3rdparty/...")
mkdir -p "$root/3rdparty/compiler-rt" "$root/include/tvm/support/cuda" "$root/src/support" "$out"
cp -r "$site/tvm/src/runtime" "$root/src/runtime"
cp -r "$site/tvm/include/tvm/runtime" "$root/include/tvm/runtime"
cp -r "$site/tvm/web" "$root/web"
cp -r "$site/tvm_ffi" "$root/3rdparty/tvm-ffi"
cp "$here/builtin_fp16.h" "$root/3rdparty/compiler-rt/"
cp "$here/nvtx.h" "$root/include/tvm/support/cuda/nvtx.h"
cp "$here/support_io.h" "$root/include/tvm/support/io.h"
cp "$here/support_serializer.h" "$root/include/tvm/support/serializer.h"
cp "$here/bytes_io.h" "$here/base64.h" "$here/ring_buffer.h" "$here/arena.h" "$here/utils.h" "$root/src/support/"
flags="-I$root -I$root/include -I$root/3rdparty/tvm-ffi/include -I$root/3rdparty/tvm-ffi/3rdparty/dlpack/include \
 -O3 -std=c++17 -Wno-ignored-attributes"
pids=""
for unit in wasm_runtime tvmjs_support webgpu_runtime; do  # in parallel: three independent units
  # shellcheck disable=SC2086
  emcc $flags -emit-llvm -c -o "$out/$unit.bc" "$root/web/emcc/$unit.cc" &
  pids="$pids $!"
done
for pid in $pids; do wait "$pid"; done
ls -l "$out"
