"""A transformers forward pass that uses exactly the weights the library loads: every parameter of
the MLC weights dir dequantized (numpy) and un-fused back to HF names. Comparing the compiled library
with it isolates library correctness from quantization error.

`streamed_head_blocks` (what verification uses) runs the HF model one decoder layer at a time in float32:
only one layer's dequantized weights exist at a time, the embedding rows are dequantized for the
tokens used, and the LM head a block of vocabulary rows at a time, handed to the caller block by block
(the check compares each block and drops it: no [positions x vocabulary] float32 array is made) - the
peak is the packed weights plus one float32 layer, never a second full model. `streamed_logits`
assembles the blocks (tests); `forward_fn` builds the whole fp32 model (tests).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from builders.backends.mlc import quant as quant_mod
from builders.backends.mlc.convert_weight import read_cache
from builders.backends.mlc.models import ModelConfig, parameters
from builders.backends.mlc.quant import MlcQuant


def dequantized_params(weights: Path, c: ModelConfig, q: MlcQuant, hf_arch: str) -> dict[str, np.ndarray]:
    """Our (unquantized) parameter name -> float32 array, as the library sees it."""
    arrays = read_cache(weights)
    return {p.name: dequantized(arrays, p.name, p.shape, q) for p in parameters(c, hf_arch)}


def dequantized(arrays: dict[str, np.ndarray], name: str, shape: tuple, q: MlcQuant,
                rows: slice | np.ndarray | None = None) -> np.ndarray:
    """One parameter (optionally some of its rows) as float32, from the packed tensor cache."""
    pick = (lambda a: a) if rows is None else (lambda a: a[rows])
    if name in arrays:
        return pick(arrays[name]).astype(np.float32)
    base = name[: -len("weight")]
    layout_q = q if not name.endswith("embed_tokens.weight") else _nk(q)
    if rows is not None and layout_q.layout != "NK":
        raise ValueError(f"{name}: row slices need the NK layout")
    return quant_mod.dequantize(pick(arrays[base + "q_weight"]), pick(arrays[base + "q_scale"]), shape[1], layout_q)


def _nk(q: MlcQuant) -> MlcQuant:
    import dataclasses

    return dataclasses.replace(q, layout="NK")


def hf_state(params: dict[str, np.ndarray], c: ModelConfig, hf_arch: str) -> dict[str, np.ndarray]:
    """Our parameters split back into the checkpoint's tensors (models.parameters: un-fused where the
    family stores q/k/v and gate/up apart)."""
    layout = {p.name: p for p in parameters(c, hf_arch)}
    state = {}
    for name, arr in params.items():
        sources = layout[name].sources
        for (src, _), part in zip(sources, np.split(arr, np.cumsum([n for _, n in sources])[:-1], axis=0)):
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





LM_HEAD_ROWS = 4096  # vocabulary rows dequantized at a time for the LM head (4k x hidden x 4 B)


def streamed_logits(model_dir: Path, weights: Path, c: ModelConfig, q: MlcQuant, hf_arch: str,
                    sequences: list[np.ndarray]) -> list[np.ndarray]:
    """float32 logits [n_i, vocab] of each token sequence through the HF model carrying the library's
    dequantized weights, computed layer by layer in float32 (see the module docstring)."""
    logits = [np.empty((len(s), c.vocab_size), dtype=np.float32) for s in sequences]
    for rows, parts in streamed_head_blocks(model_dir, weights, c, q, hf_arch, sequences):
        for whole, part in zip(logits, parts):
            whole[:, rows] = part
    return logits


def streamed_head_blocks(model_dir: Path, weights: Path, c: ModelConfig, q: MlcQuant, hf_arch: str,
                         sequences: list[np.ndarray]):
    """Yields (vocabulary rows, [float32 logits [n_i, rows] of each sequence]) for consecutive blocks of
    LM_HEAD_ROWS vocabulary rows: streamed_logits' logits a block of columns at a time."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from builders.backends.mlc.cpu_schedule import threads

    torch.set_num_threads(threads())
    arrays = read_cache(weights)
    shapes = {p.name: p.shape for p in parameters(c, hf_arch)}
    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    inner = model.model
    rotary = type(inner.rotary_emb)(config=config)  # real buffers (the meta model has none)
    # every sequence in one packed row (weights read once per layer, not once per sequence): positions
    # restart per sequence and the mask is causal within a sequence only (and within the sliding window)
    lengths = [len(s) for s in sequences]
    ids = np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
    seq_of = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.concatenate([np.arange(n) for n in lengths])
    allowed = (seq_of[:, None] == seq_of[None, :]) & (pos[None, :] <= pos[:, None])
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True):
        allowed &= (pos[:, None] - pos[None, :]) < window
    mask = torch.from_numpy(np.where(allowed, np.float32(0), np.finfo(np.float32).min))[None, None]
    position_ids = torch.from_numpy(pos)[None]
    vocab_ids = np.unique(ids)
    emb = torch.from_numpy(dequantized(arrays, "model.embed_tokens.weight", shapes["model.embed_tokens.weight"], q,
                                       rows=vocab_ids))
    hidden = emb[np.searchsorted(vocab_ids, ids)][None]
    rope = rotary(hidden, position_ids)
    with torch.no_grad():
        for i, layer in enumerate(inner.layers):
            prefix = f"model.layers.{i}."
            _load(layer, prefix, {n: dequantized(arrays, n, shp, q) for n, shp in shapes.items()
                                  if n.startswith(prefix)}, c, hf_arch)
            out = layer(hidden, attention_mask=mask, position_ids=position_ids, position_embeddings=rope)
            hidden = out[0] if isinstance(out, tuple) else out
            layer.to("meta")  # frees this layer's float32 weights
        norm = dequantized(arrays, "model.norm.weight", shapes["model.norm.weight"], q)
        _load(inner.norm, "model.norm.", {"model.norm.weight": norm}, c, hf_arch)
        final = inner.norm(hidden)[0]
        del hidden, rope, mask
        splits = np.cumsum(lengths)[:-1]
        head = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
        for start in range(0, c.vocab_size, LM_HEAD_ROWS):
            rows = slice(start, min(c.vocab_size, start + LM_HEAD_ROWS))
            w = torch.from_numpy(dequantized(arrays, head, shapes[head], q, rows=rows))
            yield rows, np.split((final @ w.T).numpy(), splits)


def _load(module, prefix: str, params: dict[str, np.ndarray], c: ModelConfig, hf_arch: str) -> None:
    """Materialize a meta module on the CPU with these (our-name) parameters, un-fused to HF names."""
    import torch

    state = {k[len(prefix):]: torch.from_numpy(np.ascontiguousarray(v))
             for k, v in hf_state(params, c, hf_arch).items()}
    # the arrays become the parameters (assign: no second copy); a parameter left on meta is named below
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"{prefix}: dequantized weights do not fit the HF layer: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
