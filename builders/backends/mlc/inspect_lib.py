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
