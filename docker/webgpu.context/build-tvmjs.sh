#!/bin/sh
# Build tvmjs (TVM's JS/WebGPU runtime) from the apache-tvm wheel's web/src TypeScript into one CommonJS file,
# $1/tvmjs/tvmjs.cjs, with esbuild from $1/node_modules (npm ci from package-lock.json). Its emcc glue
# (src/tvmjs_runtime_wasi.js) is TVM's decorate_as_wasi.py over the tvmjs_runtime.js the image linked, as TVM's
# web/Makefile makes it ("es" flavour, imported by src/compact.ts).
# Usage: build-tvmjs.sh NODE_DIR
set -eu
node_dir=$1
web=/opt/tvm-web/web
src=$(mktemp -d)
cp -r "$web/src/." "$src/"
python3 "$web/emcc/decorate_as_wasi.py" /opt/tvm-web/dist/wasm/tvmjs_runtime.js "$src/tvmjs_runtime_wasi.js" es
mkdir -p "$node_dir/tvmjs"
# ws / perf_hooks: required lazily by compact.ts (RPC, timers), not bundled
"$node_dir/node_modules/.bin/esbuild" "$src/index.ts" --bundle --platform=node --format=cjs --target=node18 \
  --external:ws --external:perf_hooks --log-level=warning --outfile="$node_dir/tvmjs/tvmjs.cjs"
rm -rf "$src"
test -s "$node_dir/tvmjs/tvmjs.cjs"
