"""The checkpoint's tensors, read one at a time from its safetensors files (positioned reads of a block at
a time, no model instance, no memory map): the conversion steps take the few tensors each part needs.
A memory map would keep every page a read touched resident for as long as the file is open (a whole
vocabulary table next to the copy made from it); a block read into the tensor, converted to the asked
dtype on the way, holds one copy. A layer's projections
are named as the parts read them (q/k/v, gate/up apart): a checkpoint that stores them fused (Phi-3's
`qkv_proj`, `gate_up_proj`) is split by rows here (FUSED)."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

from builders.archs import DecoderConfig
from builders.errors import NodeFailed

EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"

# a fused checkpoint module in a decoder layer -> the modules the parts read, in row order
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj")}


def fused_rows(d: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Rows of each part of a FUSED module."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    return {"self_attn.qkv_proj": (q, kv, kv), "mlp.gate_up_proj": (d.intermediate, d.intermediate)}


ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
             "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
READ_BLOCK = 16 << 20  # bytes per positioned read


def _header(path: Path) -> tuple[int, dict]:
    """(offset of the data, {name: {dtype, shape, data_offsets}}) of one safetensors file."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise NodeFailed(f"{path.name}: not a safetensors file (shorter than its header size)")
        (size,) = struct.unpack("<Q", raw)
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return 8 + size, header


class Weights(Mapping):
    """name -> torch tensor over one or many *.safetensors files, in the checkpoint's dtype or, with
    `dtype`, its floating tensors converted to that one (a block at a time: no full copy in the
    checkpoint's dtype). A checkpoint without `lm_head.weight` (tied embeddings) answers it with the
    embedding table."""

    def __init__(self, model_dir: Path, dtype=None):
        model_dir = Path(model_dir)
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise NodeFailed(f"{model_dir.name}: no *.safetensors files (convert a .bin checkpoint to safetensors)")
        self._where: dict[str, tuple[Path, int, dict]] = {}
        for f in files:
            start, header = _header(f)
            self._where.update({k: (f, start, info) for k, info in header.items()})
        self.dtype = dtype
        self.tied = LM_HEAD not in self._where
        self._rows = fused_rows(DecoderConfig.read(model_dir))

    def _key(self, name: str) -> str:
        return EMBED if name == LM_HEAD and self.tied else name

    def __getitem__(self, name: str):
        key = self._key(name)
        if key not in self._where:
            raise KeyError(name)
        return self._read(*self._where[key], key)

    def _read(self, path: Path, start: int, info: dict, key: str):
        import torch

        if info["dtype"] not in ST_DTYPES:
            raise NodeFailed(f"{path.name}: tensor {key} has dtype {info['dtype']}, which coreml does not read")
        stored = getattr(torch, ST_DTYPES[info["dtype"]])
        want = self.dtype if self.dtype is not None and stored.is_floating_point else stored
        out = torch.empty(info["shape"], dtype=want)
        begin, end = (start + int(o) for o in info["data_offsets"])
        item = torch.empty(0, dtype=stored).element_size()
        if (end - begin) != out.numel() * item:
            raise NodeFailed(f"{path.name}: tensor {key} holds {end - begin} bytes, its shape {info['shape']} "
                             f"needs {out.numel() * item}; the file is damaged")
        flat, step = out.view(-1), max(1, READ_BLOCK // item)
        with open(path, "rb", buffering=0) as f:
            for i in range(0, out.numel(), step):
                n = min(step, out.numel() - i)
                buf = bytearray(n * item)
                f.seek(begin + i * item)
                if f.readinto(buf) != len(buf):
                    raise NodeFailed(f"{path.name}: tensor {key} is cut short; the file is damaged")
                flat[i:i + n] = torch.frombuffer(buf, dtype=stored)
        return out

    def __contains__(self, name) -> bool:
        return self._key(name) in self._where

    def __iter__(self):
        names = sorted(self._where)
        return iter(names + [LM_HEAD] if self.tied and EMBED in self._where else names)

    def __len__(self) -> int:
        return len(self._where) + int(self.tied and EMBED in self._where)

    def layer(self, i: int) -> dict:
        """The tensors of decoder layer i, named relative to the layer (`self_attn.q_proj.weight` ...),
        fused projections split into their parts."""
        prefix = f"model.layers.{i}."
        out = {}
        for key in (k for k in self._where if k.startswith(prefix)):
            name = key[len(prefix):]
            module, _, kind = name.rpartition(".")
            if module not in FUSED:
                out[name] = self[key]
                continue
            t, rows = self[key], self._rows[module]
            if t.shape[0] != sum(rows):
                raise NodeFailed(f"{key}: {t.shape[0]} rows, the config implies {sum(rows)} "
                                 f"({' + '.join(map(str, rows))}); fix config.json or the checkpoint")
            for part, piece in zip(FUSED[module], t.split(list(rows), dim=0)):
                out[f"{part}.{kind}"] = piece.contiguous()
        return out
