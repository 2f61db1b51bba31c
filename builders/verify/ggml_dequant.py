"""GGUF tensor data (block-quantized, F16, BF16) to float32 with ggml's own reference dequantizers (the
`to_float` of ggml's type traits in libggml-base, the library llama-cpp-python ships), through ctypes.

gguf-py's numpy dequantizers compute the same values (each type's block formula in the GGUF spec), but
work 16 rows per numpy call: on a 0.5B Q4_K_M file they took ~10 s of the check on 2 CPUs, where ggml's C
loops take well under one (and numpy's float16 -> float32 cast took 1.4 s of a 0.5B F16 file's check).
The runtime check still compares different code: llama.cpp's matrix multiplications never call
`to_float` on quantized weights (their vec_dot kernels read the blocks and quantize the activations),
and its figures then compare with transformers' fp32 math on these weights.
tests/test_gguf_file.py holds these values equal to gguf-py's on every block type and F16/BF16.
A large tensor is dequantized in row blocks on every CPU this process may use (the calls release the
GIL; rows dequantize independently, so the values do not depend on the split).
Runs inside the gguf image (llama_cpp); `available()` is False elsewhere and callers use gguf-py.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

from builders.verify.fp32_compute import cpu_threads


class _TypeTraits(ctypes.Structure):
    # struct ggml_type_traits (ggml.h): the fields up to to_float, in order
    _fields_ = [("type_name", ctypes.c_char_p), ("blck_size", ctypes.c_int64),
                ("blck_size_interleave", ctypes.c_int64), ("type_size", ctypes.c_size_t),
                ("is_quantized", ctypes.c_bool), ("to_float", ctypes.c_void_p), ("from_float_ref", ctypes.c_void_p)]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)
F32 = 0  # GGML_TYPE_F32: already float32, nothing to convert
PARALLEL_MIN = 1 << 20  # output elements from which a tensor is split across threads (below: one call)


@lru_cache(maxsize=1)
def _library():
    """libggml-base of the installed llama_cpp, or None (not in the gguf image)."""
    try:
        import llama_cpp  # noqa: PLC0415
    except ImportError:
        return None
    for name in ("libggml-base.so", "libggml-base.dylib"):
        path = Path(llama_cpp.__file__).parent / "lib" / name
        if path.is_file():
            lib = ctypes.CDLL(str(path))
            lib.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
            lib.ggml_get_type_traits.argtypes = [ctypes.c_int]
            return lib
    return None


@lru_cache(maxsize=None)
def _traits(ggml_type: int):
    lib = _library()
    if lib is None:
        return None
    t = lib.ggml_get_type_traits(int(ggml_type)).contents
    if not t.to_float or int(ggml_type) == F32:
        return None
    return int(t.blck_size), int(t.type_size), _TO_FLOAT(t.to_float)



def available(ggml_type: int) -> bool:
    """Whether ggml can dequantize this type here (block-quantized types, F16, BF16)."""
    return _traits(ggml_type) is not None


def dequantize(rows: np.ndarray, ggml_type: int) -> np.ndarray:
    """float32 values of a tensor's data as builders.gguf_file gives it (block-quantized types: uint8
    [..., row bytes]; F16/BF16: their 2-byte values [..., row elements]) -> float32 [..., row elements]."""
    block, size, to_float = _traits(ggml_type)
    data = np.ascontiguousarray(rows)
    data = data.reshape(data.shape[:-1] + (-1,)).view(np.uint8) if data.dtype != np.uint8 else data
    if data.shape[-1] % size:
        raise ValueError(f"rows of {data.shape[-1]} bytes are not whole {size}-byte blocks")
    out = np.empty(data.shape[:-1] + (data.shape[-1] // size * block,), dtype=np.float32)
    src, dst = data.reshape(-1, data.shape[-1]), out.reshape(-1, out.shape[-1])
    parts = min(cpu_threads(), len(src)) if out.size >= PARALLEL_MIN else 1
    cuts = np.linspace(0, len(src), parts + 1).astype(int)

    def run(a: int, b: int) -> None:
        if b > a:
            to_float(src[a:b].ctypes.data, dst[a:b].ctypes.data_as(ctypes.POINTER(ctypes.c_float)), dst[a:b].size)

    if parts > 1:
        list(_pool().map(run, cuts[:-1], cuts[1:]))
    elif out.size:
        run(0, len(src))
    return out


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=cpu_threads(), thread_name_prefix="ggml-dequant")
