"""Weights node, step `convert_weight`: HF safetensors -> MLC's `params_shard_N.bin` + `tensor-cache.json`.

Streams: each output parameter is read from the safetensors files with `safe_open` (only its source
tensors), converted (fused, cast, quantized) and appended to the current shard, which is written out
as soon as it reaches the shard cap. The parameter list (names, shapes, dtypes, order) is the one the
relax nn.Module declares, computed here with numpy only (`param_plan`) so the weights node needs no
compiler.

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
from builders.backends.mlc.models import ModelConfig, hf_sources
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


def unquantized_params(c: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter in the nn.Module's declaration order."""
    h, d = c.hidden_size, c.head_dim
    qkv = (c.num_attention_heads + 2 * c.num_key_value_heads) * d
    out = [("model.embed_tokens.weight", (c.vocab_size, h))]
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        out.append((f"{p}.input_layernorm.weight", (h,)))
        out.append((f"{p}.self_attn.qkv_proj.weight", (qkv, h)))
        if c.qkv_bias:
            out.append((f"{p}.self_attn.qkv_proj.bias", (qkv,)))
        out += [(f"{p}.self_attn.o_proj.weight", (h, c.num_attention_heads * d)),
                (f"{p}.post_attention_layernorm.weight", (h,)),
                (f"{p}.mlp.gate_up_proj.weight", (2 * c.intermediate_size, h)),
                (f"{p}.mlp.down_proj.weight", (h, c.intermediate_size))]
    out.append(("model.norm.weight", (h,)))
    if not c.tie_word_embeddings:
        out.append(("lm_head.weight", (c.vocab_size, h)))
    return out


def is_quantized(name: str, shape: tuple[int, ...], q: MlcQuant) -> bool:
    return bool(q.bits) and len(shape) == 2 and not name.endswith(NORM_AND_BIAS)


def param_plan(c: ModelConfig, q: MlcQuant) -> list[ParamPlan]:
    plans = []
    for name, shape in unquantized_params(c):
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
    """Read single HF tensors (float32) across one or many safetensors files, one at a time."""

    def __init__(self, model_dir: Path):
        from safetensors import safe_open

        self.files: dict[str, object] = {}
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        else:
            files = sorted(model_dir.glob("*.safetensors"))
            if not files:
                raise NodeFailed(f"{model_dir}: no *.safetensors files (convert .bin checkpoints to safetensors first)")
            weight_map = {}
            for f in files:
                with safe_open(str(f), "np") as h:
                    weight_map.update({k: f.name for k in h.keys()})
        self.weight_map = weight_map
        self.handles = {f: safe_open(str(model_dir / f), "pt") for f in sorted(set(weight_map.values()))}

    def get(self, name: str) -> np.ndarray:
        if name not in self.weight_map:
            raise NodeFailed(f"tensor '{name}' not found in the model's safetensors")
        t = self.handles[self.weight_map[name]].get_tensor(name)
        return t.float().numpy()  # bf16/f16/f32 sources all go through float32


def source_tensor(src: SafetensorsSource, name: str, c: ModelConfig) -> np.ndarray:
    if name == "lm_head.weight" and "lm_head.weight" not in src.weight_map:
        name = "model.embed_tokens.weight"  # untied config but the checkpoint stores only one table
    parts = [src.get(s) for s in hf_sources(name)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


class ShardWriter:
    def __init__(self, out: Path, cap: int = SHARD_CAP_BYTES):
        self.out, self.cap = out, cap
        self.shards: list[dict] = []
        self.pending: list[dict] = []
        self.buf = bytearray()

    def add(self, name: str, arr: np.ndarray) -> None:
        data = np.ascontiguousarray(arr).tobytes()
        if self.buf and len(self.buf) + len(data) > self.cap:
            self.flush()
        self.pending.append({"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype),
                             "format": "raw", "nbytes": len(data), "byteOffset": len(self.buf)})
        self.buf += data

    def flush(self) -> None:
        if not self.pending:
            return
        path = self.out / f"params_shard_{len(self.shards)}.bin"
        path.write_bytes(self.buf)
        self.shards.append({"dataPath": path.name, "format": "raw-shard", "nbytes": len(self.buf),
                            "records": self.pending, "md5sum": hashlib.md5(self.buf).hexdigest()})
        self.pending, self.buf = [], bytearray()


def convert(model_dir: Path, out: Path, c: ModelConfig, q: MlcQuant, log=print) -> dict:
    """Write shards + tensor-cache.json; return summary figures."""
    src = SafetensorsSource(model_dir)
    writer = ShardWriter(out)
    plans = param_plan(c, q)
    by_source: dict[str, list[ParamPlan]] = {}
    for p in plans:
        by_source.setdefault(p.source, []).append(p)
    n_params = n_bytes = 0
    for source, parts in by_source.items():
        w = source_tensor(src, source, c)
        expect = next(s for n, s in unquantized_params(c) if n == source)
        if tuple(w.shape) != tuple(expect):
            raise NodeFailed(f"{source}: shape {tuple(w.shape)} in the checkpoint, config implies {tuple(expect)}")
        n_params += w.size
        if parts[0].part == "weight":
            arrays = {"weight": w.astype(q.model_dtype)}
        else:
            layout_q = q if not source.endswith("embed_tokens.weight") else _nk(q)
            qw, qs = quant_mod.quantize(w, layout_q)
            arrays = {"q_weight": qw, "q_scale": qs}
        for p in parts:
            a = arrays[p.part]
            if tuple(a.shape) != p.shape or str(a.dtype) != p.dtype:
                raise NodeFailed(f"{p.name}: produced {a.shape} {a.dtype}, module declares {p.shape} {p.dtype}")
            writer.add(p.name, a)
            n_bytes += a.nbytes
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
        for r in shard["records"]:
            raw = data[r["byteOffset"]: r["byteOffset"] + r["nbytes"]]
            arrays[r["name"]] = np.frombuffer(raw, dtype=r["dtype"]).reshape(r["shape"])
    return arrays
