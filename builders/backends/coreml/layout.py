"""What one coreml node builds, derived from its params and the model's config.json: LUT per part,
chunks and their layers, LM head splits, file names. Every step recomputes it (no hidden state)."""

from __future__ import annotations

import json
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
    split_sizes: list  # vocab rows per LM head output (options.lm_head_split_sizes)
    names: dict  # options.file_names()

    def lut(self, part: str) -> opt.Lut | None:
        return opt.lut_of(self.luts[part])

    @property
    def splits(self) -> int:
        """Number of LM head outputs."""
        return len(self.split_sizes)


def layout_of(params: dict, model_dir: Path) -> Layout:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    o = params["options"]
    try:
        chunks = opt.resolve_chunks(config, o, params["luts"]["lut2"], f"node {params.get('model_name')}")
        opt.check_ffn_lut(config, params["luts"]["lut2"], f"node {params.get('model_name')}")
        split_sizes = opt.lm_head_split_sizes(config["vocab_size"], opt.lut_of(params["luts"]["lut3"]))
    except MatrixError as e:
        raise NodeFailed(str(e)) from None
    prefix = o.get("prefix") or config.get("model_type", "model")
    return Layout(config, dict(params["luts"]), chunks, opt.chunk_layers(config["num_hidden_layers"], chunks),
                  o["context"], o["batch"], prefix, bool(o.get("argmax")), split_sizes,
                  opt.file_names(prefix, params["luts"], chunks))
