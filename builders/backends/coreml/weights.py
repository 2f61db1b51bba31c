"""The checkpoint's tensors, read one at a time from its safetensors files (memory-mapped, no model
instance, no copies): the conversion steps take the few tensors each part needs. A layer's projections
are named as the parts read them (q/k/v, gate/up apart): a checkpoint that stores them fused (Phi-3's
`qkv_proj`, `gate_up_proj`) is split by rows here (FUSED)."""

from __future__ import annotations

import json
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


class Weights(Mapping):
    """name -> torch tensor (the checkpoint's dtype) over one or many *.safetensors files. A checkpoint
    without `lm_head.weight` (tied embeddings) answers it with the embedding table."""

    def __init__(self, model_dir: Path):
        from safetensors import safe_open

        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            self._where = dict(json.loads(index.read_text())["weight_map"])
        else:
            files = sorted(model_dir.glob("*.safetensors"))
            if not files:
                raise NodeFailed(f"{model_dir.name}: no *.safetensors files (convert a .bin checkpoint to safetensors)")
            self._where = {}
            for f in files:
                with safe_open(str(f), "pt") as h:
                    self._where.update({k: f.name for k in h.keys()})
        self._files = {name: safe_open(str(model_dir / name), "pt") for name in sorted(set(self._where.values()))}
        self.tied = LM_HEAD not in self._where
        self._rows = fused_rows(DecoderConfig.read(model_dir))

    def _key(self, name: str) -> str:
        return EMBED if name == LM_HEAD and self.tied else name

    def __getitem__(self, name: str):
        key = self._key(name)
        if key not in self._where:
            raise KeyError(name)
        return self._files[self._where[key]].get_tensor(key)

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
