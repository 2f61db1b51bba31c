// Run an MLC webgpu .wasm in Node the way web-llm does: tvmjs (built from the apache-tvm wheel's web/src in the
// webgpu image) instantiates the .wasm, WebGPU comes from the npm `webgpu` package (Dawn) on Mesa's lavapipe,
// the weights (tensor-cache.json + raw shards from the mlc-weights node) are copied onto the GPU and the
// model runs through its VM entry points (`embed` -> `batch_prefill` / `prefill` -> `decode`, paged KV cache).
//
// usage: node webgpu_run.mjs LIB.wasm WEIGHTS_DIR   (the VM comes from tvmjs's systemLib(), as in web-llm)
// Requests come one JSON object per line on stdin, answers one per line on stdout, prefixed "@@bm "
// (everything else on stdout is the runtime's own logging):
//   {"op": "info"}                                   -> adapter, device features, library metadata
//   {"op": "forward", "tokens": [...], "prompt_len": n, "out": PATH}
//        logits at every position (prompt through chunked batch_prefill, the rest one decode step each)
//   {"op": "prefill_last", "tokens": [...], "out": PATH}  -> last position's logits via `prefill`
//   {"op": "close"}
// Logits are written to PATH as raw little-endian bytes of the answered dtype and shape [n, vocab].
import fs from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { createRequire } from "node:module";

const NODE_DIR = process.env.BUILDMATRIX_WEBGPU_NODE || "/opt/webgpu-node";
const PAGE_SIZE = 16;
const require = createRequire(import.meta.url);
const tvmjs = require(path.join(NODE_DIR, "tvmjs", "tvmjs.cjs"));
const { create, globals } = await import(path.join(NODE_DIR, "node_modules", "webgpu", "index.js"));

function answer(obj) {
  process.stdout.write("@@bm " + JSON.stringify(obj) + "\n");
}

async function openDevice() {
  Object.assign(globalThis, globals);  // GPUBufferUsage, GPUMapMode, ... as a browser has them
  Object.defineProperty(globalThis, "navigator", { value: { gpu: create([]) }, configurable: true });
  const found = await tvmjs.detectGPUDevice();  // web-llm's adapter/limits/features request
  if (!found) throw new Error("no WebGPU adapter (npm webgpu / Dawn found no Vulkan device)");
  const info = found.adapterInfo || {};
  return { device: found.device, adapter: {
    vendor: info.vendor, architecture: info.architecture, device: info.device, description: info.description,
    features: [...found.device.features].sort(),
    limits: { maxBufferSize: found.device.limits.maxBufferSize,
              maxStorageBufferBindingSize: found.device.limits.maxStorageBufferBindingSize } } };
}

async function loadWeights(tvm, dev, dir) {
  const cache = JSON.parse(fs.readFileSync(path.join(dir, "tensor-cache.json"), "utf8"));
  let n = 0, bytes = 0;
  for (const shard of cache.records) {
    const data = fs.readFileSync(path.join(dir, shard.dataPath));
    if (data.length !== shard.nbytes) throw new Error(`${shard.dataPath}: ${data.length} bytes, tensor-cache.json says ${shard.nbytes}`);
    for (const rec of shard.records) {
      if (rec.format !== "raw") throw new Error(`${rec.name}: record format '${rec.format}' (only raw is read here)`);
      tvm.beginScope();
      const cpu = tvm.empty(rec.shape, rec.dtype, tvm.cpu());
      cpu.copyFromRawBytes(new Uint8Array(data.buffer, data.byteOffset + rec.byteOffset, rec.nbytes));
      const gpu = tvm.empty(rec.shape, rec.dtype, dev);
      gpu.copyFrom(cpu);
      await dev.sync();
      tvm.tensorCacheUpdate(rec.name, gpu, false);
      tvm.endScope();
      n += 1; bytes += rec.nbytes;
    }
  }
  return { tensors: n, bytes };
}

class Session {
  static async open(wasmPath, weightsDir) {
    const s = new Session();
    const { device, adapter } = await openDevice();
    s.adapter = adapter;
    s.tvm = await tvmjs.instantiate(fs.readFileSync(wasmPath), tvmjs.createPolyfillWASI(), (m) => console.error(m));
    s.tvm.initWebGPU(device);
    s.dev = s.tvm.webgpu();
    const tvm = s.tvm;
    tvm.beginScope();  // the session's scope: everything detached below lives until close
    // web-llm's lookup: the system library without a prefix (a library compiled with a symbol prefix fails here)
    if (!tvm.systemLib().getFunction("vm_load_executable")) {
      throw new Error("the .wasm's system library has no vm_load_executable: it was not compiled without a "
                      + "system-lib prefix, so web-llm's systemLib() cannot find the model");
    }
    s.vm = tvm.detachFromCurrentScope(tvm.createVirtualMachine(s.dev));
    s.metadata = JSON.parse(s.vm.getFunction("_metadata")());
    s.weights = await loadWeights(tvm, s.dev, weightsDir);
    s.params = tvm.detachFromCurrentScope(tvm.getParamsFromCacheByName(s.metadata.params.map((p) => p.name)));
    tvm.getGlobalFunc("vm.builtin.tensor_cache.clear")();
    s.fn = {};
    for (const name of ["embed", "prefill", "decode", "batch_prefill", "create_tir_paged_kv_cache"]) {
      s.fn[name] = tvm.detachFromCurrentScope(s.vm.getFunction(name));
    }
    for (const name of ["kv_state_add_sequence", "kv_state_begin_forward", "kv_state_end_forward"]) {
      s.fn[name] = tvm.detachFromCurrentScope(tvm.getGlobalFunc("vm.builtin." + name));
    }
    tvm.endScope();
    return s;
  }

  newSequence() {
    const tvm = this.tvm, S = (v) => tvm.makeShapeTuple([v]), md = this.metadata;
    if (this.kv) this.kv.dispose();
    tvm.beginScope();
    this.kv = tvm.detachFromCurrentScope(this.fn.create_tir_paged_kv_cache(
      S(1), S(md.context_window_size), S(md.prefill_chunk_size), S(PAGE_SIZE), S(0)));
    this.fn.kv_state_add_sequence(this.kv, new tvmjs.Scalar(0, "int64"));
    tvm.endScope();
  }

  // one forward call over `ids` (batch_prefill with positions 0..n-1, prefill, or decode): [n or 1, vocab] logits
  async step(fn, ids, withPositions) {
    const tvm = this.tvm, dev = this.dev;
    tvm.beginScope();
    this.fn.kv_state_begin_forward(this.kv, tvm.makeShapeTuple([0]), tvm.makeShapeTuple([ids.length]));
    const input = tvm.empty([ids.length], "int32", dev).copyFrom(Int32Array.from(ids));
    const emb = this.fn.embed(input, this.params);
    const args = [emb.view([1, ids.length, this.metadata.hidden_size])];
    if (withPositions) {
      args.push(tvm.empty([ids.length], "int32", dev).copyFrom(Int32Array.from(ids.map((_, i) => i))));
    }
    const ret = this.fn[fn](...args, this.kv, this.params);
    const logits = ret.get(0);
    this.fn.kv_state_end_forward(this.kv);
    const cpu = tvm.empty(logits.shape, logits.dtype, tvm.cpu());
    cpu.copyFrom(logits);
    await dev.sync();
    const out = { bytes: cpu.toRawBytes(), dtype: logits.dtype, vocab: logits.shape[logits.shape.length - 1] };
    tvm.endScope();
    return out;
  }

  async forward(tokens, promptLen) {
    const chunk = this.metadata.prefill_chunk_size;
    if (tokens.length > this.metadata.context_window_size) {
      throw new Error(`${tokens.length} tokens exceed the library's context_window_size ${this.metadata.context_window_size}`);
    }
    this.newSequence();
    const parts = [];
    for (let start = 0; start < promptLen; start += chunk) {
      parts.push(await this.step("batch_prefill", tokens.slice(start, Math.min(promptLen, start + chunk)), true));
    }
    for (const t of tokens.slice(promptLen)) parts.push(await this.step("decode", [t], false));
    return parts;
  }
}

function writeParts(out, parts) {
  const fd = fs.openSync(out, "w");
  let rows = 0;
  for (const p of parts) {
    fs.writeSync(fd, p.bytes);
    rows += p.bytes.length / (p.vocab * (p.dtype === "float32" ? 4 : 2));
  }
  fs.closeSync(fd);
  return { shape: [rows, parts[0].vocab], dtype: parts[0].dtype };
}

async function main() {
  const [wasmPath, weightsDir] = process.argv.slice(2);
  let session;
  try {
    session = await Session.open(wasmPath, weightsDir);
  } catch (err) {
    answer({ ok: false, error: "open: " + (err && err.stack || String(err)) });
    process.exit(1);
  }
  answer({ ok: true, op: "open" });
  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    const req = JSON.parse(line);
    try {
      if (req.op === "info") {
        const md = session.metadata;
        answer({ ok: true, adapter: session.adapter, weights: session.weights, node: process.version,
                 metadata: { context_window_size: md.context_window_size, prefill_chunk_size: md.prefill_chunk_size,
                             model_dtype: md.model_dtype, params: md.params.length } });
      } else if (req.op === "forward") {
        answer({ ok: true, ...writeParts(req.out, await session.forward(req.tokens, req.prompt_len ?? req.tokens.length)) });
      } else if (req.op === "prefill_last") {
        session.newSequence();
        const part = await session.step("prefill", req.tokens, false);
        answer({ ok: true, ...writeParts(req.out, [part]) });
      } else if (req.op === "close") {
        answer({ ok: true });
        break;
      } else {
        answer({ ok: false, error: `unknown op '${req.op}'` });
      }
    } catch (err) {
      answer({ ok: false, error: (err && err.stack) || String(err) });
    }
  }
  process.exit(0);
}

await main();
