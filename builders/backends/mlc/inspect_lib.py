"""Structural checks of a built library that need no device: what a GPU/phone/Mac would load.

cuda .so: contains a CUDA fatbin (magic 0xBA55ED50) and no embedded CUDA C source (`extern "C" __global__`).
.tar: every object is for the target architecture (ELF e_machine / Mach-O cputype / wasm magic).
"""

from __future__ import annotations

import struct
import tarfile
from pathlib import Path

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
CUDA_SOURCE_MARK = b"__global__"
ELF_MACHINES = {183: "aarch64", 62: "x86_64"}
MACHO_CPUS = {0x0100000C: "arm64", 0x01000007: "x86_64"}


def object_arch(data: bytes) -> str:
    if data[:4] == b"\x7fELF":
        machine = struct.unpack_from("<H", data, 18)[0]
        return f"{ELF_MACHINES.get(machine, machine)}-elf"
    if data[:4] == b"\xcf\xfa\xed\xfe":
        cpu = struct.unpack_from("<I", data, 4)[0]
        return f"{MACHO_CPUS.get(cpu, hex(cpu))}-macho"
    if data[:4] == b"\x00asm":
        return "wasm"
    return "unknown"


def tar_objects(path: Path) -> dict[str, str]:
    """member name -> object arch."""
    out = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            if m.isfile():
                out[m.name] = object_arch(tar.extractfile(m).read())
    return out


def check_tar(path: Path, expected: str) -> tuple[dict, list[str]]:
    objs = tar_objects(path)
    failures = [f"{path.name}:{n} is {a}, expected {expected}" for n, a in objs.items() if a != expected]
    if not objs:
        failures.append(f"{path.name} holds no objects")
    return {"objects": objs, "expected_arch": expected}, failures


def check_cuda_so(path: Path) -> tuple[dict, list[str]]:
    data = path.read_bytes()
    facts = {"fatbin": data.count(FATBIN_MAGIC), "cuda_source_embedded": CUDA_SOURCE_MARK in data}
    failures = []
    if not facts["fatbin"]:
        failures.append(f"{path.name} has no CUDA fatbin (only source?): libcuda.so.1 must load at build time")
    if facts["cuda_source_embedded"]:
        failures.append(f"{path.name} embeds CUDA source instead of compiled GPU code")
    return facts, failures


# ---- webgpu .wasm: what tvmjs (TVM's web runtime, the one web-llm bundles) needs of a model library ----
# exports tvmjs calls (tvm/web/src/runtime.ts, apache-tvm 0.27.0.post1), besides the linear memory
TVMJS_EXPORTS = ("memory", "TVMWasmAllocSpace", "TVMWasmFreeSpace", "TVMFFIFunctionCall", "TVMFFIFunctionGetGlobal",
                 "TVMFFIFunctionSetGlobal", "TVMFFIObjectDecRef", "TVMFFIAnyViewToOwnedAny", "TVMFFIDataTypeToString",
                 "TVMFFIErrorSetRaisedFromCStr", "TVMFFIGetTypeInfo", "TVMFFITypeKeyToIndex")
# env functions tvmjs itself supplies (tvm/web/src/environment.ts); the rest must come from the emcc glue
TVMJS_ENV = ("__cxa_thread_atexit", "emscripten_notify_memory_growth", "TVMFFIWasmSafeCall",
             "TVMFFIWasmFunctionDeleter", "__console_log")
WASM_EXTERNAL_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def _name(data: bytes, pos: int) -> tuple[str, int]:
    n, pos = _leb(data, pos)
    return data[pos:pos + n].decode(), pos + n


def wasm_interface(data: bytes) -> dict:
    """{"imports": ["module.name", ...], "exports": {name: kind}} of a wasm module (a linked one, not an object)."""
    if data[:4] != b"\x00asm":
        raise ValueError("not a wasm module (magic)")
    pos, imports, exports, sections = 8, [], {}, []
    while pos < len(data):
        sid, size = data[pos], 0
        size, body = _leb(data, pos + 1)
        end = body + size
        sections.append(sid)
        if sid == 2:  # import section
            count, p = _leb(data, body)
            for _ in range(count):
                module, p = _name(data, p)
                field, p = _name(data, p)
                kind = data[p]
                p += 1
                if kind == 0:
                    _, p = _leb(data, p)
                elif kind == 1:
                    p += 1
                    flags, p = _leb(data, p)
                    _, p = _leb(data, p)
                    if flags & 1:
                        _, p = _leb(data, p)
                elif kind == 2:
                    flags, p = _leb(data, p)
                    _, p = _leb(data, p)
                    if flags & 1:
                        _, p = _leb(data, p)
                elif kind == 3:
                    p += 2
                else:  # tag
                    p += 1
                    _, p = _leb(data, p)
                imports.append(f"{module}.{field}")
        elif sid == 7:  # export section
            count, p = _leb(data, body)
            for _ in range(count):
                field, p = _name(data, p)
                kind = data[p]
                _, p = _leb(data, p + 1)
                exports[field] = WASM_EXTERNAL_KINDS.get(kind, str(kind))
        pos = end
    return {"imports": sorted(imports), "exports": dict(sorted(exports.items())), "sections": sections}


def glue_imports(glue_js: str) -> list[str]:
    """What the emcc JS glue of tvmjs (tvmjs_runtime.wasi.js) hands a module as imports: the keys of its
    import object (emscripten 3.1.x: `var asmLibraryArg = {...}`, given as both env and wasi_snapshot_preview1)."""
    import re

    m = re.search(r"var (?:asmLibraryArg|wasmImports)\s*=\s*\{(.*?)\};", glue_js, re.S)
    if not m:
        raise ValueError("no import object (asmLibraryArg / wasmImports) in the tvmjs glue")
    names = sorted(set(re.findall(r'"?([A-Za-z_$][\w$]*)"?\s*:', m.group(1))))
    return [f"{mod}.{n}" for mod in ("env", "wasi_snapshot_preview1") for n in names]


def check_wasm(path: Path, provided: list[str] | None) -> tuple[dict, list[str]]:
    """A linked webgpu .wasm against what tvmjs needs: every export it calls, the system library's static
    initializer, and no import that neither tvmjs nor its emcc glue (`provided`) supplies. Fail closed: no
    record of the glue's imports is a failure."""
    data = path.read_bytes()
    failures: list[str] = []
    try:
        iface = wasm_interface(data)
    except (ValueError, IndexError) as e:
        return {"size": len(data)}, [f"{path.name} is not a readable wasm module: {e}"]
    exports, imports = iface["exports"], iface["imports"]
    missing = [e for e in TVMJS_EXPORTS if e not in exports]
    if missing:
        failures.append(f"{path.name} lacks exports tvmjs calls: {', '.join(missing)}")
    if not ({"_initialize", "__wasm_call_ctors"} & set(exports)):
        failures.append(f"{path.name} exports no initializer (_initialize / __wasm_call_ctors): the model's "
                        "functions would never register with the system library")
    if provided is None:
        failures.append("no record of the imports tvmjs's emcc glue provides: the imports are unchecked")
        unresolved = []
    else:
        allowed = set(provided) | {f"env.{n}" for n in TVMJS_ENV}
        unresolved = [i for i in imports if i not in allowed]
        if unresolved:
            failures.append(f"{path.name} imports what tvmjs does not provide: {', '.join(unresolved[:8])}")
    facts = {"size": len(data), "imports": imports, "exports": len(exports),
             "tvmjs_exports_present": [e for e in TVMJS_EXPORTS if e in exports], "unresolved_imports": unresolved}
    return facts, failures


SPIRV_MAGIC = struct.pack("<I", 0x07230203)


def check_vulkan_lib(path: Path, expected: str) -> tuple[dict, list[str]]:
    """A vulkan .so (x86_64 ELF) / vulkan-windows .dll (PE) that carries SPIR-V shaders."""
    data = path.read_bytes()
    arch = "x86_64-pe" if data[:2] == b"MZ" and b"PE\0\0" in data[:4096] else object_arch(data)
    facts = {"arch": arch, "expected_arch": expected, "spirv_modules": data.count(SPIRV_MAGIC)}
    failures = []
    if arch != expected:
        failures.append(f"{path.name} is {arch}, expected {expected}")
    if not facts["spirv_modules"]:
        failures.append(f"{path.name} carries no SPIR-V: TVM was not built with Vulkan codegen")
    return facts, failures
