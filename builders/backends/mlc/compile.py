"""Lib node, step `compile`: export the relax nn.Module with MLC's entry points, attach `_metadata`,
build it for one target with `relax.build`, write the library file.

Outputs per target (see targets.py): cpu/cuda `.so`, android/iphone `.tar` of objects (static system
library), metal/metal_x86_64 `.tar` of objects (the .dylib link is deferred to macOS), webgpu the `.wasm` web-llm
loads: the wasm objects linked with TVM's web runtime in the webgpu image (link_tvmjs_wasm), vulkan `.so`
and vulkan-windows `.dll` in the mlc-vulkan image (a TVM built with Vulkan; mingw-w64 for the .dll).
Archives are deterministic: sorted, owner 0, mtime SOURCE_DATE_EPOCH.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

from builders.backends.mlc import cpu_schedule
from builders.backends.mlc.convert_weight import param_plan
from builders.backends.mlc.models import ARCHS, Arch, ModelConfig
from builders.backends.mlc.quant import MlcQuant
from builders.backends.mlc.targets import MlcTarget

ENTRY_POINTS = ("embed", "prefill", "decode", "batch_prefill", "batch_decode", "batch_verify",
                "create_tir_paged_kv_cache", "_metadata")


def ensure_libcuda() -> str:
    """Make `libcuda.so.1` loadable before tvm is imported: TVM's CUDA module (and with it the nvcc
    callback that produces a fatbin) only loads when it is. Uses the driver when present, else the stub
    named by $BUILDMATRIX_CUDA_STUB (built in the mlc image). Returns which one, for the manifest."""
    import ctypes
    import sys

    if "tvm" in sys.modules:
        return "unknown (tvm imported before the compile step)"
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        return "driver"
    except OSError:
        stub = os.environ.get("BUILDMATRIX_CUDA_STUB")
        if stub and Path(stub).is_file():
            ctypes.CDLL(stub, mode=ctypes.RTLD_GLOBAL)
            return f"stub ({Path(stub).name})"
    return "missing"


def tvm_target(t: MlcTarget):
    import tvm

    spec = dict(t.tvm)
    if t.host:
        spec["host"] = dict(t.host)
    return tvm.target.Target(spec)


def metadata(c: ModelConfig, q: MlcQuant, arch: Arch, kv_dtype: str) -> dict:
    """The `_metadata` JSON MLC's runtime reads (plus `hidden_size`/`model_dtype` for our harness)."""
    return {
        "model_type": arch.model_type,
        "quantization": q.code,
        "context_window_size": c.context_window_size,
        "sliding_window_size": c.sliding_window_size,
        "attention_sink_size": -1,
        "prefill_chunk_size": c.prefill_chunk_size,
        "max_batch_size": c.max_batch_size,
        "tensor_parallel_shards": c.tensor_parallel_shards,
        "pipeline_parallel_stages": 1,
        "disaggregation": False,
        "kv_state_kind": "kv_cache",
        "kv_cache": {"num_hidden_layers": c.num_hidden_layers, "head_dim": c.head_dim,
                     "num_attention_heads": c.num_attention_heads,
                     "num_key_value_heads": c.num_key_value_heads},
        "params": [{"name": p.name, "shape": list(p.shape), "dtype": p.dtype, "preprocs": []}
                   for p in param_plan(c, q, arch.hf_arch)],
        "memory_usage": {},
        "hidden_size": c.hidden_size,
        "model_dtype": kv_dtype,
    }


def export(hf_config: dict, c: ModelConfig, q: MlcQuant, target):
    """(IRModule with _metadata, parameter names) for one target."""
    from tvm import relax
    from tvm.ir import StringImm

    arch = ARCHS[hf_config["architectures"][0]]
    cls = importlib.import_module(f"builders.backends.mlc.models.{arch.module}").CausalLM
    model = cls(c, q, target)
    mod, named = model.export_tvm(spec=model.get_default_spec())
    names = [n for n, _ in named]
    expected = [p.name for p in param_plan(c, q, arch.hf_arch)]
    if names != expected:
        raise RuntimeError(f"module parameters differ from the weights plan: {names[:4]}... vs {expected[:4]}...")
    bb = relax.BlockBuilder(mod)
    with bb.function("_metadata", params=[]):
        text = json.dumps(metadata(c, q, arch, q.model_dtype), sort_keys=True)
        bb.emit_func_output(StringImm(text))
    return bb.get(), names


def pipeline(t: MlcTarget, target):
    """relax.build pipeline: for CPU TVM's CPU passes with dlight CPU rules and parallel loops
    (cpu_schedule.py); for GPUs the generic passes with our dlight rules."""
    import tvm
    from tvm import relax
    from tvm.relax.backend import gpu_generic
    from tvm.s_tir import dlight as dl

    if not t.gpu_rules:
        return cpu_schedule.pipeline(target)
    rules = [getattr(dl.gpu, r)() for r in t.gpu_rules]

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target:
            seq = tvm.transform.Sequential([
                *relax.pipeline.library_dispatch_passes(target),
                relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR(),
                dl.ApplyDefaultSchedule(*rules),
                *gpu_generic.dataflow_lower_passes(target),
                *gpu_generic.finalize_passes(target),
            ])
            return seq(mod)

    return _pipeline


def _epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def deterministic_tar(output: str, files: list[str], **_kwargs) -> None:
    """A tar of `files` (by base name), sorted, owner 0, mtime SOURCE_DATE_EPOCH, mode 0644."""
    with tarfile.open(output, "w", format=tarfile.GNU_FORMAT) as tar:
        for f in sorted(files, key=lambda p: Path(p).name):
            data = Path(f).read_bytes()
            info = tarfile.TarInfo(Path(f).name)
            info.size, info.mtime, info.mode = len(data), _epoch(), 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))


deterministic_tar.output_format = "tar"


WEB_RUNTIME = Path(os.environ.get("BUILDMATRIX_TVM_WEB", "/opt/tvm-web/dist/wasm"))  # webgpu image
WEB_RUNTIME_UNITS = ("wasm_runtime.bc", "tvmjs_support.bc", "webgpu_runtime.bc")
# the link of TVM's own tvm.support.emcc.create_tvmjs_wasm (apache-tvm 0.27.0.post1), flag for flag
TVMJS_LINK_FLAGS = ("-O3", "-std=c++17", "--no-entry", "-s", "WASM_BIGINT=1", "-s", "ERROR_ON_UNDEFINED_SYMBOLS=0",
                    "-s", "STANDALONE_WASM=1", "-s", "ALLOW_MEMORY_GROWTH=1", "-s", "TOTAL_MEMORY=160MB")


def link_tvmjs_wasm(output: str, objects: list[str], **_kwargs) -> None:
    """emcc-link the model's wasm objects after TVM's web runtime into the .wasm tvmjs/web-llm loads. TVM's
    create_tvmjs_wasm asks export_library for LLVM bitcode, which Debian's emscripten (LLVM 14) cannot read
    from TVM's LLVM 22; wasm objects link fine, so this is the same link with object files."""
    import subprocess

    libs = [WEB_RUNTIME / u for u in WEB_RUNTIME_UNITS]
    missing = [str(p) for p in libs if not p.is_file()]
    if missing:
        raise RuntimeError(f"TVM web runtime not built: {', '.join(missing)} missing (the webgpu image builds them)")
    cmd = ["emcc", *TVMJS_LINK_FLAGS, "-o", output, *map(str, libs), *objects]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError("emcc link of the .wasm failed:\n" + proc.stdout[-4000:])


link_tvmjs_wasm.object_format = "o"


def link_mingw_dll(output: str, objects: list[str], **_kwargs) -> None:
    """Link a vulkan-windows .dll with mingw-w64 (mlc-vulkan image) against TVM's runtime import library."""
    import subprocess

    runtime = Path(os.environ.get("TVM_LIBRARY_PATH", "/opt/src/tvm/build"))
    implib = sorted(runtime.glob("*tvm_runtime*.dll.a")) or sorted(runtime.glob("*tvm_runtime*.lib"))
    if not implib:
        raise RuntimeError(f"no Windows TVM runtime import library (tvm_runtime.dll.a) in {runtime}: the .dll "
                           "must link against a Windows build of the same TVM")
    cmd = ["x86_64-w64-mingw32-g++", "-shared", "-O2", "-static-libgcc", "-static-libstdc++", "-o", output,
           *objects, str(implib[0])]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError("mingw-w64 link of the .dll failed:\n" + proc.stdout[-4000:])


link_mingw_dll.object_format = "o"
LINKERS = {"emcc-tvmjs": link_tvmjs_wasm, "mingw": link_mingw_dll}


def compile_lib(hf_config: dict, c: ModelConfig, q: MlcQuant, t: MlcTarget, out_file: Path, log=print,
                system_lib_prefix: str | None = None) -> dict:
    """Build the library into out_file; return timings and facts for the manifest."""
    import tvm
    from tvm import relax

    target = tvm_target(t)
    t0 = time.monotonic()
    mod, _ = export(hf_config, c, q, target)
    if system_lib_prefix:  # "" (webgpu): left to relax.build, which attaches TVM's own empty prefix for a system lib
        mod = mod.with_attr("system_lib_prefix", system_lib_prefix)
    t_export = time.monotonic() - t0
    kwargs = {"system_lib": True} if t.system_lib else {}
    with target, tvm.transform.PassContext(config=dict(t.pass_config)):
        ex = relax.build(mod, target=target, relax_pipeline=pipeline(t, target), **kwargs)
    t_build = time.monotonic() - t0 - t_export
    with tempfile.TemporaryDirectory() as ws:
        if t.link is not None:
            ex.export_library(str(out_file), fcompile=LINKERS[t.link], workspace_dir=ws)
        elif out_file.suffix == ".tar":
            ex.export_library(str(out_file), fcompile=deterministic_tar, workspace_dir=ws)
        else:
            ex.export_library(str(out_file), workspace_dir=ws)
    log(f"compile {t.name}: export {t_export:.1f}s, relax.build {t_build:.1f}s -> {out_file.name}")
    return {"file": out_file.name, "export_seconds": round(t_export, 2), "build_seconds": round(t_build, 2),
            "total_seconds": round(time.monotonic() - t0, 2), "tvm_target": json.loads(json.dumps(t.tvm)),
            "tvm_host": t.host, "schedule": "dlight gpu: " + ",".join(t.gpu_rules) if t.gpu_rules
            else "dlight cpu: GEMV,Reduction + parallel spatial loops"}
