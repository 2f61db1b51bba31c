"""The checkpoint's tensors, read one at a time from its safetensors files (memory-mapped, no model
instance, no copies): the conversion steps take the few tensors each part needs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from builders.errors import NodeFailed

EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"


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
        """The tensors of decoder layer i, named relative to the layer (`self_attn.q_proj.weight` ...)."""
        prefix = f"model.layers.{i}."
        return {k[len(prefix):]: self[k] for k in self._where if k.startswith(prefix)}
