"""What one coreml node builds, derived from its params and the model's config.json: LUT per part,
chunks and their layers, LM head splits, file names. Every step recomputes it (no hidden state)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from builders.backends.coreml import options as opt
from builders.errors import MatrixError, NodeFailed

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "config.json", "generation_config.json")


@dataclass
class Layout:
    config: dict
    luts: dict  # part -> "bits,group" | None
    chunks: int
    layers: list  # range per chunk
    context: int
    batch: int
    prefix: str
    argmax: bool
    splits: int  # LM head outputs
    names: dict  # options.file_names()

    def lut(self, part: str) -> opt.Lut | None:
        return opt.lut_of(self.luts[part])

    @property
    def split_sizes(self) -> list[int]:
        vocab = self.config["vocab_size"]
        base, extra = divmod(vocab, self.splits)
        return [base + (1 if i < extra else 0) for i in range(self.splits)]


def layout_of(params: dict, model_dir: Path) -> Layout:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    o = params["options"]
    try:
        chunks = opt.resolve_chunks(config, o, params["luts"]["lut2"], f"node {params.get('model_name')}")
    except MatrixError as e:
        raise NodeFailed(str(e)) from None
    prefix = o.get("prefix") or config.get("model_type", "model")
    splits = max(1, math.ceil(config["vocab_size"] / opt.LM_HEAD_SPLIT_MAX))
    return Layout(config, dict(params["luts"]), chunks, opt.chunk_layers(config["num_hidden_layers"], chunks),
                  o["context"], o["batch"], prefix, bool(o.get("argmax")), splits,
                  opt.file_names(prefix, params["luts"], chunks))
