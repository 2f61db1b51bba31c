"""A small numpy interpreter of saved Core ML ML programs, so the packages this backend writes can be
checked numerically on Linux (Core ML itself only runs on macOS).

It reads the program back from the saved .mlpackage (the protobuf spec and weights/weight.bin) and
evaluates one function op by op. Every op computes in float32 and its result is rounded to the dtype
the program declares for it (fp16 between ops, as on the device). States (the KV cache) are numpy
arrays the caller keeps between calls. Only the ops the parts of this backend use are implemented;
any other op fails loudly with its name.

Memory: a package's weights are read once and kept in their stored dtype (fp16; a LUT is dequantized
once, to fp16, a block of rows at a time, and its indices are not kept; a LUT weight only a gather reads -
the embedding table - stays indices + table and a gather dequantizes the rows it takes). The functions of
a multifunction package (`infer`, `prefill`) share them: blob values are cached by their location in
weight.bin, constexpr results by the locations of their inputs. Pointwise convolutions and
matmuls run as BLAS matrix products in float32 (the fp16 weight is widened for the product only: exact).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

DTYPES = {"FLOAT16": np.float16, "FLOAT32": np.float32, "INT32": np.int32, "INT16": np.int16, "INT8": np.int8,
          "UINT8": np.uint8, "UINT16": np.uint16, "BOOL": np.bool_, "INT64": np.int64, "FLOAT64": np.float64}
CAST_NAMES = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16, "int8": np.int8,
              "uint8": np.uint8, "uint16": np.uint16, "bool": np.bool_}
BLOB_READERS = {"FLOAT16": "read_fp16_data", "FLOAT32": "read_float_data", "INT32": "read_int32_data",
                "UINT32": "read_uint32_data", "INT16": "read_int16_data", "UINT16": "read_uint16_data",
                "INT8": "read_int8_data", "UINT8": "read_uint8_data", "INT4": "read_int4_data",
                "UINT1": "read_uint1_data", "UINT2": "read_uint2_data", "UINT3": "read_uint3_data",
                "UINT4": "read_uint4_data", "UINT6": "read_uint6_data"}


class UnsupportedOp(Exception):
    pass


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Unsigned `bits`-wide values packed little-endian (first value in the lowest bits)."""
    flat = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[: count * bits]
    return (flat.reshape(count, bits) << np.arange(bits)).sum(axis=1).astype(np.uint8)


def _dtype_name(code: int) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(code)


def _shape(tensor_type) -> tuple[int, ...]:
    return tuple(d.constant.size for d in tensor_type.dimensions)


class Package:
    """A saved .mlpackage: its spec and weight blobs."""

    def __init__(self, path: Path, lazy_luts: bool = False):
        import coremltools as ct

        self.path = Path(path)
        self.lazy_luts = lazy_luts  # every LUT weight kept packed (LutWeight), dequantized by the op that reads it
        self.spec = ct.utils.load_spec(str(path))
        self._weights = self.path / "Data" / "com.apple.CoreML" / "weights"
        self._blobs: dict[tuple, np.ndarray] = {}  # (file, offset, dtype, shape) -> value, for every function
        self.derived: dict[tuple, object] = {}  # constexpr results by (op type, ids of its inputs), shared

    @property
    def functions(self) -> list[str]:
        return list(self.spec.mlProgram.functions)

    def block(self, function: str):
        f = self.spec.mlProgram.functions[function]
        return f.block_specializations[f.opset], f

    def value(self, value_spec) -> object:
        """A proto Value (immediate or blob file) as numpy / python."""
        ttype = value_spec.type.tensorType
        dtype = _dtype_name(ttype.dataType)
        shape = _shape(ttype)
        if value_spec.HasField("blobFileValue"):
            blob = value_spec.blobFileValue
            key = (blob.fileName.split("/")[-1], int(blob.offset), dtype, shape)
            if dtype not in MAPPED:  # sub-byte LUT indices, unpacked to a heap copy: read for the op that
                return self._blob(blob, dtype).reshape(shape)  # dequantizes them, not kept (Function)
            if key not in self._blobs:  # one array per stored weight, whichever function asks
                self._blobs[key] = self._blob(blob, dtype).reshape(shape)
            return self._blobs[key]
        tv = value_spec.immediateValue.tensor
        kind = tv.WhichOneof("value")
        if dtype == "STRING":
            vals = list(tv.strings.values)
            return vals[0] if not shape else np.array(vals).reshape(shape)
        if kind == "bytes":
            if dtype not in DTYPES:
                return unpack_bits(tv.bytes.values, int(dtype[-1]), int(np.prod(shape))).reshape(shape)
            arr = np.frombuffer(tv.bytes.values, DTYPES[dtype])
        else:
            arr = np.array(list(getattr(tv, kind).values), dtype=DTYPES.get(dtype, np.int64))
        return arr.reshape(shape)

    def packed(self, value_spec) -> "PackedIndices | np.ndarray":
        """A LUT's index tensor without unpacking it: a sub-byte blob as a memory map of its packed bytes
        (PackedIndices), anything else as value() gives it."""
        ttype = value_spec.type.tensorType
        dtype = _dtype_name(ttype.dataType)
        if not value_spec.HasField("blobFileValue") or not dtype.startswith("UINT") or dtype in MAPPED:
            return self.value(value_spec)
        blob = value_spec.blobFileValue
        key = (blob.fileName.split("/")[-1], int(blob.offset), "packed", _shape(ttype))
        if key not in self._blobs:  # a map: its pages are the file's, dropped by release()
            self._blobs[key] = mapped_blob(self._weights / key[0], int(blob.offset), np.uint8)
        return PackedIndices(self._blobs[key], int(dtype[4:]), _shape(ttype))

    def release(self) -> None:
        """Drop the resident pages of every memory-mapped weight (they are read back from the file if an op
        needs them again): a vocabulary-wide LM head read once for all positions need not stay resident
        while the check compares the logits."""
        import mmap

        for value in self._blobs.values():
            m = getattr(value, "_mmap", None)
            if m is not None and hasattr(m, "madvise"):
                m.madvise(mmap.MADV_DONTNEED)

    def _blob(self, blob, dtype: str) -> np.ndarray:
        path = self._weights / blob.fileName.split("/")[-1]
        if dtype in MAPPED:
            return mapped_blob(path, int(blob.offset), MAPPED[dtype])
        from coremltools.libmilstoragepython import _BlobStorageReader

        # a reader per read: it maps the whole weight file, and the pages it touched would stay resident
        # next to the copy it returns (the array owns its data) for as long as the reader lives
        reader = _BlobStorageReader(str(path))
        data = np.asarray(getattr(reader, BLOB_READERS[dtype])(blob.offset))
        del reader
        return data.view(np.float16) if dtype == "FLOAT16" else data


MAPPED = {"FLOAT16": np.float16, "FLOAT32": np.float32, "INT32": np.int32, "UINT32": np.uint32,
          "INT16": np.int16, "UINT16": np.uint16, "INT8": np.int8, "UINT8": np.uint8}
"""Whole-byte blob dtypes, read as memory maps of the weight file (mapped_blob); sub-byte ones (LUT
indices) are unpacked by coremltools' reader."""
BLOB_SENTINEL = 0xDEADBEEF


def read_blob(path: Path, offset: int, dtype) -> np.ndarray:
    """One whole-byte blob read into a new array with a positioned read (no map of the file, whose touched
    pages would stay resident next to the copy)."""
    import struct

    with open(path, "rb") as f:
        f.seek(offset)
        sentinel, _, size, data = struct.unpack("<IIQQ", f.read(24))
        if sentinel != BLOB_SENTINEL or size % np.dtype(dtype).itemsize:
            raise ValueError(f"{path}: no weight blob at offset {offset} (sentinel {sentinel:#x}, {size} bytes)")
        f.seek(data)
        out = np.empty(size // np.dtype(dtype).itemsize, dtype)
        if f.readinto(memoryview(out).cast("B")) != size:
            raise ValueError(f"{path}: weight blob at offset {offset} runs past the end of the file")
    return out


def mapped_blob(path: Path, offset: int, dtype) -> np.ndarray:
    """A read-only memory map of one blob of a MIL weight file: at `offset` its 64-byte metadata
    (uint32 sentinel 0xDEADBEEF, uint32 data type, uint64 size in bytes, uint64 offset of the data), then
    the data. Nothing is copied: only the pages an op reads become resident (a gather of a few embedding
    rows reads a few pages of a vocabulary-sized table), and they are the file's, not the heap's."""
    import struct

    with open(path, "rb") as f:
        f.seek(offset)
        sentinel, _, size, data = struct.unpack("<IIQQ", f.read(24))
    if sentinel != BLOB_SENTINEL or size % np.dtype(dtype).itemsize:
        raise ValueError(f"{path}: no weight blob at offset {offset} (sentinel {sentinel:#x}, {size} bytes)")
    if not size:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data, shape=(size // np.dtype(dtype).itemsize,))


# ---- ops: fn(args: dict[str, value], ctx) -> value or tuple ------------------------------------------

def _f32(x):
    return np.asarray(x).astype(np.float32) if np.asarray(x).dtype == np.float16 else np.asarray(x)


def _axes(a):
    return tuple(int(v) for v in np.atleast_1d(a))


def _slice(x, a):
    shape = np.shape(x)
    begin, end = np.atleast_1d(a["begin"]).astype(int), np.atleast_1d(a["end"]).astype(int)
    stride = np.atleast_1d(a.get("stride", np.ones(len(shape), int))).astype(int)
    bmask = np.atleast_1d(a.get("begin_mask", np.zeros(len(shape), bool)))
    emask = np.atleast_1d(a.get("end_mask", np.zeros(len(shape), bool)))
    idx = tuple(slice(None if bmask[i] else int(begin[i]), None if emask[i] else int(end[i]), int(stride[i]))
                for i in range(len(shape)))
    return idx, np.atleast_1d(a.get("squeeze_mask", np.zeros(len(shape), bool)))


def op_slice_by_index(a, _):
    idx, squeeze = _slice(a["x"], a)
    out = np.asarray(a["x"])[idx]
    axes = tuple(i for i, s in enumerate(squeeze) if s)
    return np.squeeze(out, axis=axes) if axes else out


def op_slice_update(a, _):
    idx, squeeze = _slice(a["x"], a)
    out = np.array(a["x"], copy=True)
    target_shape = out[idx].shape
    out[idx] = np.asarray(a["update"]).reshape(target_shape)
    return out


def op_conv(a, _):
    """Pointwise convolution (any rank): kernel 1 in every spatial dim, stride 1, one group. A LutWeight
    is dequantized and multiplied a block of output channels at a time."""
    w, x = a["weight"], _f32(a["x"])
    if any(k != 1 for k in w.shape[2:]) or int(a.get("groups", 1)) != 1 or \
            any(int(s) != 1 for s in np.atleast_1d(a["strides"])):
        raise UnsupportedOp(f"conv other than pointwise, stride 1, groups 1 (weight {w.shape})")
    b, spatial = x.shape[0], x.shape[2:]
    x2 = x.reshape(b, x.shape[1], -1)
    if isinstance(w, LutWeight):
        out = np.empty((b, w.shape[0], x2.shape[-1]), np.float32)
        for r, r1, rows in w.blocks():
            out[:, r:r1] = np.matmul(rows.reshape(r1 - r, -1).astype(np.float32), x2)
    else:
        w = _f32(w)
        out = np.matmul(w.reshape(w.shape[0], w.shape[1]), x2)  # BLAS: [b, o, n]
    out = out.reshape((b, w.shape[0]) + spatial)
    if "bias" in a:
        out = out + _f32(a["bias"]).reshape((1, -1) + (1,) * (out.ndim - 2))
    return out


_BLAS = []  # the threadpoolctl controller, made on first use


def _one_blas_thread():
    """BLAS limited to one thread for a block: the attention products are many small matrices (per head,
    S x context), where waking BLAS threads costs more than the product (measured on 2 cores: 0.7 s with
    one thread vs 7.8 s with two for one 4-layer check, on a loaded machine)."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def op_matmul(a, _):
    x, y = _f32(a["x"]), _f32(a["y"])
    if bool(a.get("transpose_x", False)):
        x = np.swapaxes(x, -1, -2)
    if bool(a.get("transpose_y", False)):
        y = np.swapaxes(y, -1, -2)
    with _one_blas_thread():
        return np.matmul(x, y)


def op_layer_norm(a, _):
    x = _f32(a["x"])
    axes = _axes(a["axes"])
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    out = (x - mean) / np.sqrt(var + float(a.get("epsilon", 1e-5)))
    if "gamma" in a:
        out = out * _f32(a["gamma"])
    if "beta" in a:
        out = out + _f32(a["beta"])
    return out


def op_softmax(a, _):
    x = _f32(a["x"])
    axis = int(a.get("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def op_gather(a, _):
    idx = np.asarray(a["indices"]).astype(np.int64)
    if int(a.get("batch_dims", 0)) != 0:
        raise UnsupportedOp("gather with batch_dims")
    x, axis = a["x"], int(a.get("axis", 0))
    idx = np.where(idx < 0, idx + np.shape(x)[axis], idx)
    if isinstance(x, LutWeight):
        return x.take_rows(idx) if axis in (0, -len(x.shape)) else np.take(x.dense(), idx, axis=axis)
    return np.take(x, idx, axis=axis)


LUT_BLOCK = 1 << 20  # weights dequantized per block (its integer index temporary: 8 MiB)


def _lut_table(lut) -> np.ndarray:
    lut = np.asarray(lut)
    if lut.shape[-1] != 1:
        raise UnsupportedOp("constexpr_lut_to_dense with vector_axis")
    return lut[..., 0]  # [g0, ..., gn, 2**bits]


def _dequant(table: np.ndarray, indices: np.ndarray, rows: np.ndarray, shape: tuple) -> np.ndarray:
    """Dense values of the rows `rows` (axis 0 of a weight of `shape`) whose LUT indices are `indices`
    ([len(rows), *shape[1:]]): axis i of the weight is split in table.shape[i] groups of equal size."""
    size = [n // table.shape[i] for i, n in enumerate(shape)]
    grid = np.ix_(*[np.arange(n) // size[i] for i, n in enumerate(shape)][1:]) if len(shape) > 1 else ()
    first = (np.asarray(rows) // size[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    return table[(first,) + tuple(grid) + (np.asarray(indices).astype(np.intp),)]


def lut_dense(indices, lut, first: int = 0, stop: int | None = None) -> np.ndarray:
    """constexpr_lut_to_dense (iOS18): indices has the weight's shape; lut [g0, ..., gn, 2**bits, vector];
    axis i is split in lut.shape[i] groups of equal size. Rows first:stop (axis 0; all by default),
    dequantized a block of rows at a time, so the integer index temporary is one block's (a
    vocabulary-wide table's indices widened at once: 1 GiB)."""
    indices, table = np.asarray(indices), _lut_table(lut)
    stop = indices.shape[0] if stop is None else stop
    out = np.empty((stop - first,) + indices.shape[1:], table.dtype)
    if not out.size:
        return out
    step = max(1, LUT_BLOCK // max(1, indices[0].size))
    for r in range(first, stop, step):
        r1 = min(r + step, stop)
        out[r - first:r1 - first] = _dequant(table, indices[r:r1], np.arange(r, r1), indices.shape)
    return out


class PackedIndices:
    """A sub-byte index tensor as stored: `bits`-wide unsigned values packed little-endian (first value in
    the lowest bits) in a memory map of the weight file; rows (axis 0) are unpacked on demand."""

    def __init__(self, data: np.ndarray, bits: int, shape: tuple):
        self.data, self.bits, self.shape = data, bits, tuple(shape)
        self.row = int(np.prod(self.shape[1:], dtype=np.int64))
        if data.size * 8 < self.row * self.shape[0] * bits:
            raise ValueError(f"{data.size} bytes hold fewer than {self.shape} {bits}-bit values")

    def values(self, first: int, count: int) -> np.ndarray:
        """`count` values from value `first` on, as uint8."""
        start, stop = first * self.bits, (first + count) * self.bits
        raw = np.unpackbits(np.asarray(self.data[start // 8:-(-stop // 8)]), bitorder="little")
        bits = raw[start % 8:start % 8 + count * self.bits].reshape(count, self.bits)
        padded = np.zeros((count, 8), np.uint8)
        padded[:, :self.bits] = bits
        return np.packbits(padded, axis=1, bitorder="little").reshape(count)

    def rows(self, first: int, stop: int) -> np.ndarray:
        return self.values(first * self.row, (stop - first) * self.row).reshape((stop - first,) + self.shape[1:])

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows),) + self.shape[1:], np.uint8)
        for i, r in enumerate(rows):
            out[i] = self.rows(int(r), int(r) + 1)[0]
        return out


class LutWeight:
    """A constexpr_lut_to_dense result the interpreter keeps as its indices (packed as stored, or an
    array) and table, dequantized by the op that reads it: a gather only the rows it takes (the
    embedding table, 151936 x 896 fp16: 272 MB, is never dense), a convolution a block of rows at a time
    (the LM head's parts, read once per pass over all positions)."""

    def __init__(self, indices, lut):
        self.indices = indices if isinstance(indices, PackedIndices) else np.asarray(indices)
        self.table = _lut_table(lut)
        self.shape, self.dtype = tuple(self.indices.shape), self.table.dtype

    def index_rows(self, first: int, stop: int) -> np.ndarray:
        if isinstance(self.indices, PackedIndices):
            return self.indices.rows(first, stop)
        return self.indices[first:stop]

    def take_rows(self, idx: np.ndarray) -> np.ndarray:
        flat = np.asarray(idx, np.intp).reshape(-1)
        ix = self.indices.take(flat) if isinstance(self.indices, PackedIndices) else self.indices[flat]
        return _dequant(self.table, ix, flat, self.shape).reshape(np.shape(idx) + self.shape[1:])

    def blocks(self):
        """(first, stop, dense rows first:stop) over the whole weight, LUT_BLOCK weights at a time."""
        step = max(1, LUT_BLOCK // max(1, int(np.prod(self.shape[1:], dtype=np.int64))))
        for r in range(0, self.shape[0], step):
            r1 = min(r + step, self.shape[0])
            yield r, r1, _dequant(self.table, self.index_rows(r, r1), np.arange(r, r1), self.shape)

    def dense(self) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        for r, r1, rows in self.blocks():
            out[r:r1] = rows
        return out


def op_lut_to_dense(a, _):
    return lut_dense(a["indices"], a["lut"])


def op_concat(a, _):
    vals = [np.asarray(v) for v in a["values"]]
    if bool(a.get("interleave", False)):
        raise UnsupportedOp("concat interleave")
    return np.concatenate(vals, axis=int(a["axis"]))


def op_cast(a, _):
    return np.asarray(a["x"]).astype(CAST_NAMES[str(a["dtype"])])


def op_reduce(fn):
    def run(a, _):
        axes = _axes(a["axes"]) if "axes" in a else None
        return fn(_f32(a["x"]), axis=axes, keepdims=bool(a.get("keep_dims", False)))
    return run


def op_reduce_argmax(a, _):
    out = np.argmax(_f32(a["x"]), axis=int(a.get("axis", -1)))
    return np.expand_dims(out, int(a.get("axis", -1))) if bool(a.get("keep_dims", False)) else out


def op_read_state(a, ctx):
    return ctx.states[a["input"]]


def op_write_state(a, ctx):
    ctx.states[a["input"]] = np.asarray(a["data"]).astype(ctx.states[a["input"]].dtype)
    return ()


def _binary(fn):
    return lambda a, _: fn(_f32(a["x"]), _f32(a["y"]))


OPS: dict[str, Callable] = {
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply),
    "real_div": _binary(np.divide), "maximum": _binary(np.maximum), "minimum": _binary(np.minimum),
    "greater_equal": _binary(np.greater_equal), "less": _binary(np.less), "greater": _binary(np.greater),
    "select": lambda a, _: np.where(np.asarray(a["cond"]), _f32(a["a"]), _f32(a["b"])),
    "cast": op_cast, "gather": op_gather, "conv": op_conv, "matmul": op_matmul,
    "transpose": lambda a, _: np.transpose(a["x"], _axes(a["perm"])),
    "reshape": lambda a, _: np.reshape(a["x"], tuple(int(v) for v in np.atleast_1d(a["shape"]))),
    "expand_dims": lambda a, _: np.expand_dims(a["x"], _axes(a["axes"])),
    "squeeze": lambda a, _: np.squeeze(a["x"], axis=_axes(a["axes"])) if "axes" in a else np.squeeze(a["x"]),
    "tile": lambda a, _: np.tile(a["x"], _axes(a["reps"])),
    "concat": op_concat, "slice_by_index": op_slice_by_index, "slice_update": op_slice_update,
    "layer_norm": op_layer_norm, "softmax": op_softmax,
    "silu": lambda a, _: _f32(a["x"]) / (1.0 + np.exp(-_f32(a["x"]))),
    "sigmoid": lambda a, _: 1.0 / (1.0 + np.exp(-_f32(a["x"]))),
    "exp": lambda a, _: np.exp(_f32(a["x"])), "sqrt": lambda a, _: np.sqrt(_f32(a["x"])),
    "rsqrt": lambda a, _: 1.0 / np.sqrt(_f32(a["x"]) + float(a.get("epsilon", 1e-12))),
    "reduce_mean": op_reduce(np.mean), "reduce_sum": op_reduce(np.sum), "reduce_max": op_reduce(np.max),
    "reduce_argmax": op_reduce_argmax,
    "stack": lambda a, _: np.stack([np.asarray(v) for v in a["values"]], axis=int(a["axis"])),
    "read_state": op_read_state, "write_state": op_write_state,
    "constexpr_lut_to_dense": op_lut_to_dense, "identity": lambda a, _: np.asarray(a["x"]),
}


class Function:
    """One function of a package, ready to run: consts (LUTs dequantized) evaluated once."""

    def __init__(self, package: Package, name: str = "main"):
        self.package = package
        self.name = name
        self.block, spec = package.block(name)
        self.inputs = [i.name for i in spec.inputs]
        self.states = {i.name: (_shape(i.type.stateType.wrappedType.tensorType),
                                DTYPES[_dtype_name(i.type.stateType.wrappedType.tensorType.dataType)])
                       for i in spec.inputs if i.type.HasField("stateType")}
        self.op_types = sorted({op.type for op in self.block.operations})
        missing = [t for t in self.op_types if t not in OPS and t != "const"]
        if missing:
            raise UnsupportedOp(f"{package.path.name}:{name}: ops not implemented here: {', '.join(missing)}")
        self._consts: dict[str, object] = {}
        readers: dict[str, set] = {}
        for op in self.block.operations:
            for arg in op.inputs.values():
                for b in arg.arguments:
                    if b.name:
                        readers.setdefault(b.name, set()).add(op.type)
        specs = {}  # const name -> its Value: consts only constexpr ops read are read when those run
        for op in self.block.operations:
            if op.type == "const":
                name = op.outputs[0].name
                specs[name] = op.attributes["val"]
                if not all(t.startswith("constexpr_") for t in readers.get(name, ())):
                    self._consts[name] = package.value(specs[name])
            elif op.type.startswith("constexpr_"):
                key = (op.type, self._identity(op, specs))
                if key not in package.derived:  # the other function of the package may have run it
                    lazy = op.type == "constexpr_lut_to_dense" and (
                        package.lazy_luts or readers.get(op.outputs[0].name) == {"gather"})
                    read = package.packed if lazy else package.value
                    env = {**self._consts, **{n: read(v) for n, v in specs.items()
                                              if n not in self._consts and n in self._input_names(op)}}
                    args = self._args(op, env)
                    package.derived[key] = (LutWeight(args["indices"], args["lut"]) if lazy
                                            else self._finish(op, OPS[op.type](args, None)))
                    del env, args
                self._consts[op.outputs[0].name] = package.derived[key]
        self._dead_after = self._liveness()

    @staticmethod
    def _input_names(op) -> set:
        return {b.name for arg in op.inputs.values() for b in arg.arguments if b.name}

    def _identity(self, op, specs: dict) -> tuple:
        """What a constexpr op computes from, independent of which function reads it: each input's blob
        location (or its immediate value's bytes, or the id of a derived value)."""
        out = []
        for key, arg in sorted(op.inputs.items()):
            for b in arg.arguments:
                spec = specs.get(b.name) if b.name else b.value
                if spec is not None and spec.HasField("blobFileValue"):
                    out.append((key, spec.blobFileValue.fileName, int(spec.blobFileValue.offset)))
                elif spec is not None:
                    out.append((key, spec.SerializeToString(deterministic=True)))
                else:
                    out.append((key, "derived", id(self._consts[b.name])))
        return tuple(out)

    def _liveness(self) -> list[list[str]]:
        """Per op: the values computed by earlier ops (not consts) that no later op and no block output
        reads, dropped from a call's environment once the op has run (a call otherwise keeps every
        intermediate value, e.g. one KV cache copy per slice_update, until it returns)."""
        ops = self.block.operations
        last: dict[str, int] = {}
        for i, op in enumerate(ops):
            for arg in op.inputs.values():
                for b in arg.arguments:
                    if b.name:
                        last[b.name] = i
        keep = set(self.block.outputs) | set(self._consts) | set(self.inputs)
        dead: list[list[str]] = [[] for _ in ops]
        for name, i in last.items():
            if name not in keep:
                dead[i].append(name)
        return dead

    def new_state(self) -> dict[str, np.ndarray]:
        return {n: np.zeros(shape, dtype) for n, (shape, dtype) in self.states.items()}

    def _args(self, op, env) -> dict:
        args = {}
        for key, arg in op.inputs.items():
            vals = [env[b.name] if b.name else self.package.value(b.value) for b in arg.arguments]
            args[key] = vals if key == "values" else vals[0]
        return args

    def _run_op(self, op, env, ctx):
        return self._finish(op, OPS[op.type](self._args(op, env), ctx))

    def __call__(self, inputs: dict[str, np.ndarray], state: dict[str, np.ndarray] | None = None) -> dict:
        """Run on `inputs`; `state` (from new_state()) is updated in place."""

        class Ctx:
            states = state if state is not None else {}

        env: dict[str, object] = dict(self._consts)
        for name in self.inputs:  # a state input is bound to its name (read_state/write_state look it up)
            env[name] = name if name in self.states else inputs[name]
        for op, dead in zip(self.block.operations, self._dead_after):
            if op.type == "const" or op.type.startswith("constexpr_"):
                continue
            value = self._run_op(op, env, Ctx)
            if value is not None:
                env[op.outputs[0].name] = value
            for name in dead:
                env.pop(name, None)
        return {name: env[name] for name in self.block.outputs}

    def run_many(self, calls: list[tuple[dict, dict | None]]) -> list[dict]:
        """Independent calls [(inputs, state)] run in lockstep, op by op: each call has its own values and
        state, as in __call__, but a pointwise convolution runs once for all of them (their inputs side by
        side on the last axis: one matrix product per weight instead of one per call, each column the same
        dot product). Returns each call's outputs."""
        envs, ctxs = [], []
        for inputs, state in calls:
            ctxs.append(type("Ctx", (), {"states": state if state is not None else {}}))
            envs.append({**self._consts, **{n: n if n in self.states else inputs[n] for n in self.inputs}})
        for op, dead in zip(self.block.operations, self._dead_after):
            if op.type == "const" or op.type.startswith("constexpr_"):
                continue
            if op.type == "conv" and len(calls) > 1:
                values = self._conv_many(op, envs)
            else:
                values = [self._run_op(op, env, ctx) for env, ctx in zip(envs, ctxs)]
            for env, value in zip(envs, values):
                if value is not None:
                    env[op.outputs[0].name] = value
                for name in dead:
                    env.pop(name, None)
        return [{name: env[name] for name in self.block.outputs} for env in envs]

    def _conv_many(self, op, envs) -> list:
        args = [self._args(op, env) for env in envs]
        xs = [np.asarray(a["x"]) for a in args]
        if len({x.shape[:-1] for x in xs}) != 1 or any(a["weight"] is not args[0]["weight"] for a in args):
            return [self._finish(op, OPS["conv"](a, None)) for a in args]
        cuts = np.cumsum([x.shape[-1] for x in xs])[:-1]
        out = OPS["conv"]({**args[0], "x": np.concatenate(xs, axis=-1)}, None)
        return [self._finish(op, part) for part in np.split(out, cuts, axis=-1)]

    def _finish(self, op, result):
        """An op's result rounded to the dtype the program declares for its output."""
        outs = op.outputs
        if not outs:
            return None
        dtype = DTYPES.get(_dtype_name(outs[0].type.tensorType.dataType))
        value = np.asarray(result)
        return value.astype(dtype) if dtype is not None and value.dtype != dtype else value


def load(path: Path, function: str | None = None, package: Package | None = None,
         lazy_luts: bool = False) -> Function:
    """One function of the package at `path` (the first by default); pass `package` to share its
    weights with functions loaded before. lazy_luts: its LUT weights stay packed (Package)."""
    pkg = package or Package(path, lazy_luts)
    return Function(pkg, function or pkg.functions[0])
