#!/bin/sh
# Compile libllama + libggml* + bm-logits from the sdist's llama.cpp for one runtime target and lay out the
# bundle a GGUF cell ships (bin/, lib/, runtime.json). Runs in the gguf-<runtime> images and, as is, on a CI
# runner (e.g. the Android NDK: -DCMAKE_TOOLCHAIN_FILE=$ANDROID_NDK_HOME/build/cmake/android.toolchain.cmake).
#   build-runtime.sh TARGET TOOLCHAIN SDIST_LLAMA_DIR JOBS -- EXTRA CMAKE ARGS...
# BM_RUNTIME_OUT (default /opt/gguf-runtime), BM_RUNTIME_BUILD (default /src/build): bundle and build dirs.
# BUNDLE_EXTRA (env): more files for lib/ (a toolchain's runtime DLLs).
# TOOLCHAIN names the compilers used and is recorded in runtime.json (e.g. "debian gcc-aarch64-linux-gnu").
set -eu
target=$1 toolchain=$2 llama=$3 jobs=$4
shift 5
src=$(cd "$(dirname "$0")" && pwd)  # this script's directory holds CMakeLists.txt and bm-logits.cpp
out=${BM_RUNTIME_OUT:-/opt/gguf-runtime}
build=${BM_RUNTIME_BUILD:-/src/build}
cmake -S "$src" -B "$build" -DLLAMA_SOURCE="$llama" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_COMMON=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DCMAKE_PLATFORM_NO_VERSIONED_SONAME=ON -DCMAKE_BUILD_RPATH='$ORIGIN/../lib' -DCMAKE_INSTALL_PREFIX="$out" "$@"
cmake --build "$build" --target bm-logits -j "$jobs"
mkdir -p "$out/bin" "$out/lib"
find "$build" -name 'bm-logits' -type f -perm -u+x -exec cp {} "$out/bin/" \;
find "$build" -name 'bm-logits.exe' -exec cp {} "$out/bin/" \;
find "$build" \( -name 'lib*.so*' -o -name '*.dll' \) -exec cp {} "$out/lib/" \;  # unversioned: no links
for f in ${BUNDLE_EXTRA:-}; do cp "$f" "$out/lib/"; done  # runtime libraries of the toolchain (mingw's)
ls "$out/bin"/bm-logits* >/dev/null
python3 - "$target" "$toolchain" "$out" "$@" <<'PY'
import hashlib, json, sys
from pathlib import Path
target, toolchain, out, flags = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4:]
files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
         for p in sorted(out.rglob("*")) if p.is_file() and not p.is_symlink()}
info = {"gguf_runtime": {"target": target, "toolchain": toolchain, "cmake_flags": flags, "files": files}}
(out / "runtime.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
print("runtime bundle:", ", ".join(files))
PY
