"""Weights node, step `convert_weight`: HF safetensors -> MLC's `params_shard_N.bin` + `tensor-cache.json`.

Streams: each output parameter is read from the safetensors files with `safe_open` (only its source
tensors), converted (fused, cast, quantized) and appended to the current shard, which is written out
as soon as it reaches the shard cap. The parameter list (names, shapes, dtypes, order) is the one the
relax nn.Module declares, described once in `models.parameters` (with the checkpoint tensors each is
made of) and quantized here with numpy only (`param_plan`), so the weights node needs no compiler.

tensor-cache.json (the format TVM's `vm.builtin.tensor_cache.load` and MLC's loaders read):
  {"metadata": {"ParamSize", "ParamBytes", "BitsPerParam"},
   "records": [{"dataPath": "params_shard_0.bin", "format": "raw-shard", "nbytes", "md5sum",
                "records": [{"name", "shape", "dtype", "format": "raw", "nbytes", "byteOffset"}]}]}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from builders.backends.mlc import quant as quant_mod
from builders.backends.mlc.models import ModelConfig, Param, parameters
from builders.backends.mlc.quant import MlcQuant
from builders.errors import NodeFailed

SHARD_CAP_BYTES = 32 << 20  # MLC's default shard size
NORM_AND_BIAS = ("layernorm.weight", "norm.weight", ".bias")


@dataclass(frozen=True)
class ParamPlan:
    name: str  # our parameter name (MLC's), e.g. model.layers.0.self_attn.qkv_proj.q_weight
    source: str  # unquantized parameter it derives from, e.g. ...qkv_proj.weight
    part: str  # "weight" (as is, cast), "q_weight" or "q_scale"
    shape: tuple[int, ...]
    dtype: str


def is_quantized(name: str, shape: tuple[int, ...], q: MlcQuant) -> bool:
    return bool(q.bits) and len(shape) == 2 and not name.endswith(NORM_AND_BIAS)


def param_plan(c: ModelConfig, q: MlcQuant, hf_arch: str) -> list[ParamPlan]:
    plans = []
    for name, shape in ((p.name, p.shape) for p in parameters(c, hf_arch)):
        if not is_quantized(name, shape, q):
            plans.append(ParamPlan(name, name, "weight", shape, q.model_dtype))
            continue
        n, k = shape
        layout = "NK" if name.endswith("embed_tokens.weight") else q.layout
        w_shape, s_shape = (n, q.words(k)), (n, q.groups(k))
        if layout == "KN":
            w_shape, s_shape = w_shape[::-1], s_shape[::-1]
        base = name[: -len("weight")]
        plans.append(ParamPlan(base + "q_weight", name, "q_weight", w_shape, "uint32"))
        plans.append(ParamPlan(base + "q_scale", name, "q_scale", s_shape, q.model_dtype))
    return plans


class SafetensorsSource:
    """Read single HF tensors (float32) across one or many safetensors files, one at a time.

    Tensors are read with positioned reads from the files, not through a memory map: the pages of a
    mapped checkpoint stay in the process's resident set once touched, so converting a model tensor by
    tensor would end up holding the whole checkpoint. The format is an 8-byte little-endian header
    length, a JSON header {name: {dtype, shape, data_offsets}} and the data (safetensors' documented
    layout); bf16 widens to float32 exactly by a 16-bit shift."""

    DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}

    def __init__(self, model_dir: Path):
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = [f.name for f in sorted(model_dir.glob("*.safetensors"))]
            if not files:
                raise NodeFailed(f"{model_dir}: no *.safetensors files (convert .bin checkpoints to safetensors first)")
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        for name in files:
            path = model_dir / name
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                header = json.loads(f.read(n))
            for key, info in header.items():
                if key != "__metadata__":
                    self.entries[key] = (path, 8 + n, info)
        self.weight_map = {k: p.name for k, (p, _, _) in self.entries.items()}

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.entries:
            raise NodeFailed(f"tensor '{name}' not found in the model's safetensors")
        return tuple(self.entries[name][2]["shape"])

    def get(self, name: str, rows: slice | None = None) -> np.ndarray:
        """The tensor (or rows [start, stop) of its first dimension: one contiguous byte range of the
        row-major data) as float32."""
        shape = self.shape(name)
        path, base, info = self.entries[name]
        dtype = self.DTYPES.get(info["dtype"])
        if dtype is None:
            raise NodeFailed(f"{path.name}: tensor '{name}' has dtype {info['dtype']} (F32, F16, BF16 or F64 expected)")
        start, end = info["data_offsets"]
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        if not shape or end - start != shape[0] * row_bytes:
            raise NodeFailed(f"{path.name}: tensor '{name}' has {end - start} bytes, its shape {list(shape)} "
                             f"and dtype {info['dtype']} need {shape[0] * row_bytes if shape else '?'}")
        if rows is not None:
            a, b, step = rows.indices(shape[0])
            if step != 1:
                raise ValueError(f"{name}: row slices must be contiguous")
            start, end, shape = start + a * row_bytes, start + max(a, b) * row_bytes, (max(0, b - a), *shape[1:])
        raw = np.empty(end - start, dtype=np.uint8)
        with open(path, "rb") as f:
            f.seek(base + start)
            if f.readinto(memoryview(raw)) != end - start:
                raise NodeFailed(f"{path.name}: tensor '{name}' is truncated")
        arr = raw.view(dtype).reshape(shape)
        if info["dtype"] == "BF16":
            wide = arr.astype(np.uint32)
            wide <<= 16  # in place: one float32-sized array, no second temporary
            return wide.view(np.float32)
        return arr.astype(np.float32)  # bf16/f16/f32 sources all go through float32


def source_tensor(src: SafetensorsSource, param: Param, rows: slice | None = None) -> np.ndarray:
    """Our unquantized parameter (or rows [start, stop) of it) from its checkpoint tensors
    (models.parameters: concatenated along dim 0), each source checked for shape; only the rows asked
    for are read."""
    sources = param.sources
    if param.name == "lm_head.weight" and "lm_head.weight" not in src.weight_map:
        sources = (("model.embed_tokens.weight", param.shape[0]),)  # untied config, one table stored
    for name, n in sources:
        got = src.shape(name)
        if not got or got[0] != n or tuple(got[1:]) != tuple(param.shape[1:]):
            raise NodeFailed(f"{name}: shape {got} in the checkpoint, the config implies {(n, *param.shape[1:])}")
    a, b, _ = (rows or slice(None)).indices(param.shape[0])
    parts, offset = [], 0
    for name, n in sources:
        lo, hi = max(a, offset), min(b, offset + n)
        if lo < hi:
            parts.append(src.get(name, slice(lo - offset, hi - offset)))
        offset += n
    if not parts:
        return np.zeros((0, *param.shape[1:]), np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def row_blocks(n: int, block: int | None = None) -> list[slice]:
    """Slices of ROW_BLOCK rows covering n rows (at least one, so an empty tensor is still visited)."""
    block = block or quant_mod.ROW_BLOCK
    return [slice(i, min(n, i + block)) for i in range(0, n, block)] or [slice(0, 0)]


def converted(src: SafetensorsSource, param: Param, q: MlcQuant) -> dict[str, np.ndarray]:
    """{"weight"} (cast to the model dtype) or {"q_weight", "q_scale"} of one parameter, made a row block
    at a time: no float32 copy of a whole vocabulary table exists, only one block of it."""
    blocks = (source_tensor(src, param, rows) for rows in row_blocks(param.shape[0]))
    if not is_quantized(param.name, param.shape, q):
        return {"weight": _join([b.astype(q.model_dtype) for b in blocks])}
    layout_q = q if not param.name.endswith("embed_tokens.weight") else _nk(q)
    qw, qs = quant_mod.quantize_blocks(blocks, layout_q)
    return {"q_weight": qw, "q_scale": qs}


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


class ShardWriter:
    def __init__(self, out: Path, cap: int = SHARD_CAP_BYTES):
        self.out, self.cap = out, cap
        self.shards: list[dict] = []
        self.pending: list[dict] = []
        self.buf = bytearray()

    def add(self, name: str, arr: np.ndarray) -> None:
        data = np.ascontiguousarray(arr)
        nbytes = data.nbytes
        if self.buf and len(self.buf) + nbytes > self.cap:
            self.flush()
        self.pending.append({"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype),
                             "format": "raw", "nbytes": nbytes, "byteOffset": len(self.buf)})
        self.buf += memoryview(data.reshape(-1)).cast("B")  # the bytes appended once, no bytes() copy first

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.out / f"params_shard_{len(self.shards)}.bin"
        path.write_bytes(self.buf)
        self.shards.append({"dataPath": path.name, "format": "raw-shard", "nbytes": len(self.buf),
                            "records": self.pending, "md5sum": hashlib.md5(self.buf).hexdigest()})
        self.pending, self.buf = [], bytearray()


def convert(model_dir: Path, out: Path, c: ModelConfig, q: MlcQuant, hf_arch: str, log=print) -> dict:
    """Write shards + tensor-cache.json; return summary figures."""
    src = SafetensorsSource(model_dir)
    writer = ShardWriter(out)
    plans = param_plan(c, q, hf_arch)
    layout = {p.name: p for p in parameters(c, hf_arch)}
    by_source: dict[str, list[ParamPlan]] = {}
    for p in plans:
        by_source.setdefault(p.source, []).append(p)
    n_params = n_bytes = 0
    for source, parts in by_source.items():
        param = layout[source]
        arrays = converted(src, param, q)
        n_params += int(np.prod(param.shape, dtype=np.int64))
        for p in parts:
            a = arrays[p.part]
            if tuple(a.shape) != p.shape or str(a.dtype) != p.dtype:
                raise NodeFailed(f"{p.name}: produced {a.shape} {a.dtype}, module declares {p.shape} {p.dtype}")
            writer.add(p.name, a)
            n_bytes += a.nbytes
        del arrays
    writer.flush()
    metadata = {"ParamSize": len(plans), "ParamBytes": n_bytes, "BitsPerParam": 8.0 * n_bytes / max(n_params, 1)}
    (out / "tensor-cache.json").write_text(json.dumps({"metadata": metadata, "records": writer.shards}, indent=1) + "\n")
    log(f"convert_weight: {len(plans)} params, {n_bytes} bytes in {len(writer.shards)} shard(s), "
        f"{metadata['BitsPerParam']:.3f} bits/param")
    return {"params": len(plans), "bytes": n_bytes, "shards": len(writer.shards),
            "bits_per_param": round(metadata["BitsPerParam"], 4), "source_params": int(n_params)}


def _nk(q: MlcQuant) -> MlcQuant:
    import dataclasses

    return dataclasses.replace(q, layout="NK")


def read_cache(out: Path) -> dict[str, np.ndarray]:
    """All arrays of a tensor cache by name (numpy; for verification and tests)."""
    meta = json.loads((out / "tensor-cache.json").read_text())
    arrays = {}
    for shard in meta["records"]:
        data = (out / shard["dataPath"]).read_bytes()
        if len(data) != shard["nbytes"] or hashlib.md5(data).hexdigest() != shard["md5sum"]:
            raise NodeFailed(f"{shard['dataPath']}: size or md5 differs from tensor-cache.json")
        view = memoryview(data)  # records are views of the shard's bytes, not copies
        for r in shard["records"]:
            raw = view[r["byteOffset"]: r["byteOffset"] + r["nbytes"]]
            arrays[r["name"]] = np.frombuffer(raw, dtype=r["dtype"]).reshape(r["shape"])
    return arrays
