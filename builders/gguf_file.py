"""A GGUF file's header read straight from a memory map: key/values, tensor infos, tensor data views.

Why not gguf-py's GGUFReader: it builds a numpy memmap slice for every element of every array field
before anything can be read. A real vocabulary is hundreds of thousands of such elements: on a 151k
token Qwen2 file it took 39 s per open (measured in the gguf image), twice per verify step, where
the file's conversion took 25 s. Here the arrays of the key/value section are decoded in one pass
(numeric arrays as one numpy view, strings one by one from the mapped bytes): under a second. The
tensor data stay in the map and are only read when a check dequantizes them; block sizes and
dequantization come from gguf-py (`gguf.constants.GGML_QUANT_SIZES`, `gguf.quants.dequantize`).

Layout (GGUF v2/v3, little-endian; the format's own spec in llama.cpp's docs):
  magic "GGUF", u32 version, u64 tensor count, u64 key/value count,
  key/values: (string key, u32 type, value),
  tensor infos: (string name, u32 n_dims, u64 dims[n_dims] (innermost first), u32 ggml type, u64 offset),
  padding to `general.alignment` (default 32), then the tensor data (offsets are relative to it).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# GGUF value types (gguf-py GGUFValueType): struct formats of the scalars and numpy dtypes of their arrays
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8", 12: "<f8"}
STRING, ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32
# ggml types whose data are plain numbers (gguf-py GGMLQuantizationType values); the rest are byte blocks
_PLAIN = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64, 28: np.float64}


class GgufFormatError(ValueError):
    """Not a GGUF file this reader understands (the message names the file and what is wrong)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]  # GGUF order: innermost (row length) first
    type: int  # ggml type id (gguf.GGMLQuantizationType)
    offset: int  # absolute byte offset in the file

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (outermost first), as gguf-py's ReaderTensor.data has it."""
        return tuple(reversed(self.dims))


class GgufFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file cannot be mapped
                raise GgufFormatError(f"{self.path}: empty file, not GGUF") from None
        data = self._map
        if data[:4] != b"GGUF":
            raise GgufFormatError(f"{self.path}: not a GGUF file (magic {bytes(data[:4])!r})")
        try:
            self._parse(data)
        except (struct.error, UnicodeDecodeError, ValueError) as e:
            raise GgufFormatError(f"{self.path}: truncated or malformed GGUF header ({e})") from None

    def _parse(self, data) -> None:
        (self.version,) = struct.unpack_from("<I", data, 4)
        if self.version < 2:
            raise GgufFormatError(f"{self.path}: GGUF version {self.version} not supported (2 or 3)")
        n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
        pos = 24

        def string(pos):
            (n,) = struct.unpack_from("<Q", data, pos)
            end = pos + 8 + n
            if end > len(data):
                raise ValueError(f"string of {n} bytes runs past the end")
            return data[pos + 8: end].decode("utf-8"), end

        def value(typ, pos):
            if typ == STRING:
                return string(pos)
            if typ == ARRAY:
                etyp, count = struct.unpack_from("<IQ", data, pos)
                pos += 12
                if etyp in _NUMPY:
                    arr = np.frombuffer(data, dtype=_NUMPY[etyp], count=count, offset=pos)
                    return arr.tolist(), pos + arr.nbytes
                out = []
                for _ in range(count):
                    v, pos = value(etyp, pos)
                    out.append(v)
                return out, pos
            if typ not in _SCALARS:
                raise ValueError(f"unknown value type {typ}")
            return struct.unpack_from(_SCALARS[typ], data, pos)[0], pos + struct.calcsize(_SCALARS[typ])

        self.kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key, pos = string(pos)
            (typ,) = struct.unpack_from("<I", data, pos)
            self.kv[key], pos = value(typ, pos + 4)
        infos = []
        for _ in range(n_tensors):
            name, pos = string(pos)
            (n_dims,) = struct.unpack_from("<I", data, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", data, pos + 4)
            pos += 4 + 8 * n_dims
            typ, offset = struct.unpack_from("<IQ", data, pos)
            pos += 12
            infos.append((name, tuple(int(d) for d in dims), int(typ), int(offset)))
        align = int(self.kv.get("general.alignment", DEFAULT_ALIGNMENT))
        start = pos + (-pos % align)
        self.tensors = [TensorInfo(n, d, t, start + o) for n, d, t, o in infos]

    def data(self, t: TensorInfo) -> np.ndarray:
        """A read-only view of one tensor's data in the map, shaped as gguf-py's ReaderTensor.data: plain
        types as numbers in numpy order, block-quantized types as uint8 rows of their blocks' bytes."""
        if t.type in _PLAIN:
            arr = np.frombuffer(self._map, dtype=_PLAIN[t.type], count=t.n_elements, offset=t.offset)
            return arr.reshape(t.shape)
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: PLC0415

        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(t.type)]
        if t.dims[0] % block:
            raise GgufFormatError(f"{self.path}: tensor {t.name} rows of {t.dims[0]} are not whole {block}-blocks")
        row_bytes = t.dims[0] // block * size
        arr = np.frombuffer(self._map, dtype=np.uint8, count=t.n_elements // block * size, offset=t.offset)
        return arr.reshape(t.shape[:-1] + (row_bytes,))

    def release(self, t: TensorInfo) -> None:
        """Drop the mapped pages of one tensor's data from this process's resident memory (madvise
        MADV_DONTNEED on a read-only file mapping: the page cache keeps them, a later read faults them back
        in). A check that dequantizes tensor after tensor so holds one tensor of the file, not all of it."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = t.offset - t.offset % mmap.PAGESIZE
        end = min(len(self._map), t.offset + self.data(t).nbytes)  # data() is a view: its size, nothing read
        if end > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def type_name(self, t: TensorInfo) -> str:
        from gguf.constants import GGMLQuantizationType  # noqa: PLC0415

        return GGMLQuantizationType(t.type).name


def read_kv(path: Path) -> dict[str, Any]:
    """Only the key/value section of a GGUF file."""
    return GgufFile(path).kv
