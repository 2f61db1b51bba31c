"""A transformers forward pass that uses exactly the weights the library loads: every parameter of
the MLC weights dir dequantized (numpy) and un-fused back to HF names. Comparing the compiled library
with it isolates library correctness from quantization error."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from builders.backends.mlc import quant as quant_mod
from builders.backends.mlc.convert_weight import read_cache, unquantized_params
from builders.backends.mlc.models import ModelConfig, hf_sources
from builders.backends.mlc.quant import MlcQuant


def dequantized_params(weights: Path, c: ModelConfig, q: MlcQuant) -> dict[str, np.ndarray]:
    """Our (unquantized) parameter name -> float32 array, as the library sees it."""
    arrays = read_cache(weights)
    out = {}
    for name, shape in unquantized_params(c):
        if name in arrays:
            out[name] = arrays[name].astype(np.float32)
            continue
        base = name[: -len("weight")]
        layout_q = q if not name.endswith("embed_tokens.weight") else _nk(q)
        out[name] = quant_mod.dequantize(arrays[base + "q_weight"], arrays[base + "q_scale"], shape[1], layout_q)
    return out


def _nk(q: MlcQuant) -> MlcQuant:
    import dataclasses

    return dataclasses.replace(q, layout="NK")


def hf_state(params: dict[str, np.ndarray], c: ModelConfig) -> dict[str, np.ndarray]:
    """Un-fuse qkv_proj / gate_up_proj back to HF tensor names."""
    d = c.head_dim
    split = {"qkv_proj": [c.num_attention_heads * d, c.num_key_value_heads * d, c.num_key_value_heads * d],
             "gate_up_proj": [c.intermediate_size, c.intermediate_size]}
    state = {}
    for name, arr in params.items():
        sources = hf_sources(name)
        if len(sources) == 1:
            state[sources[0]] = arr
            continue
        sizes = next(v for k, v in split.items() if f".{k}." in name)
        for src, part in zip(sources, np.split(arr, np.cumsum(sizes)[:-1], axis=0)):
            state[src] = part
    return state


def forward_fn(model_dir: Path, state: dict[str, np.ndarray], dtype: str = "float32"):
    """tokens -> float32 logits [n, vocab] of the HF model carrying `state`, computing in `dtype`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    config = AutoConfig.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype), attn_implementation="eager")
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)).to(getattr(torch, dtype)) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"dequantized state does not fit the HF model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.eval()

    def forward(tokens):
        with torch.no_grad():
            ids = torch.tensor(np.asarray(tokens, dtype=np.int64)[None])
            return model(input_ids=ids).logits[0].float().numpy()

    return forward



