"""Conversion of the parts: torch trace -> ct.convert (mlprogram, fp16, iOS18) -> optional k-means LUT
palettization -> save; FFN + prefill combined with save_multifunction. Saved packages are made
byte-deterministic (see `normalize_package`)."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path

import numpy as np

from builders.backends.coreml import parts
from builders.backends.coreml.options import Lut

DEPLOYMENT_TARGET = "iOS18"
KMEANS_WORKERS = 2


class Source:
    """The HF checkpoint as tensors: config fields, weights (float32), rope tables for `context`."""

    def __init__(self, model_dir: Path, context: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.eval()
        c = model.config
        self.config = c
        self.cfg = {"heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads or c.num_attention_heads,
                    "head_dim": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
                    "eps": c.rms_norm_eps, "context": context, "hidden": c.hidden_size, "vocab": c.vocab_size,
                    "layers": c.num_hidden_layers}
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if "lm_head.weight" not in self.state:  # tied embeddings
            self.state["lm_head.weight"] = self.state["model.embed_tokens.weight"]
        with torch.no_grad():
            pos = torch.arange(context).unsqueeze(0)
            cos, sin = model.model.rotary_emb(torch.zeros(1, context, dtype=torch.float32), pos)
        self.rope = (cos[0], sin[0])

    def layer(self, i: int) -> dict:
        prefix = f"model.layers.{i}."
        return {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}


def _convert(module, example: tuple, inputs: list, outputs: list, states: list | None = None):
    import coremltools as ct
    import torch

    module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, example)
    return ct.convert(traced, inputs=inputs, outputs=outputs, states=states or None,
                      minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                      compute_precision=ct.precision.FLOAT16, convert_to="mlprogram", skip_model_load=True)


def palettize(mlmodel, lut: Lut | None):
    """k-means LUT (constexpr_lut_to_dense) on every weight, one LUT per `group_size` output channels."""
    if lut is None:
        return mlmodel
    import coremltools.optimize.coreml as cto

    op = cto.OpPalettizerConfig(mode="kmeans", nbits=lut.bits, granularity="per_grouped_channel",
                                group_size=lut.group_size, num_kmeans_workers=KMEANS_WORKERS, weight_threshold=0)
    return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op))


def embeddings(src: Source, batch: int, lut: Lut | None):
    import coremltools as ct
    import torch

    module = parts.Embeddings(src.state["model.embed_tokens.weight"])
    shape = ct.EnumeratedShapes(shapes=[[1, 1], [1, batch]], default=[1, 1])
    ml = _convert(module, (torch.zeros(1, 1, dtype=torch.int32),),
                  [ct.TensorType(name="input_ids", shape=shape, dtype=np.int32)],
                  [ct.TensorType(name="hidden_states", dtype=np.float16)])
    return palettize(ml, lut)


def lm_head(src: Source, splits: int, argmax: bool, lut: Lut | None):
    import coremltools as ct
    import torch

    module = parts.LmHead(src.state["lm_head.weight"], splits, argmax)
    names = ["argmax_idx", "argmax_val"] if argmax else [f"logits{i + 1}" for i in range(splits)]
    ml = _convert(module, (torch.zeros(1, 1, src.cfg["hidden"], dtype=parts.DTYPE),),
                  [ct.TensorType(name="hidden_states", shape=(1, 1, src.cfg["hidden"]), dtype=np.float16)],
                  [ct.TensorType(name=n) for n in names])
    return palettize(ml, lut)


def chunk(src: Source, layers: range, last: bool, seq: int, lut: Lut | None):
    """One FFN chunk (seq=1, `infer`) or prefill chunk (seq=batch) with its KV cache state."""
    import coremltools as ct
    import torch

    cfg = src.cfg
    final = src.state["model.norm.weight"] if last else None
    module = parts.Chunk([src.layer(i) for i in layers], cfg, src.rope, final)
    ctx, hidden = cfg["context"], cfg["hidden"]
    example = (torch.zeros(1, seq, hidden, dtype=parts.DTYPE), torch.zeros(seq, dtype=torch.int32),
               torch.zeros(1, 1, seq, ctx, dtype=parts.DTYPE), torch.zeros(1, dtype=torch.int32))
    inputs = [ct.TensorType(name="hidden_states", shape=(1, seq, hidden), dtype=np.float16),
              ct.TensorType(name="position_ids", shape=(seq,), dtype=np.int32),
              ct.TensorType(name="causal_mask", shape=(1, 1, seq, ctx), dtype=np.float16),
              ct.TensorType(name="current_pos", shape=(1,), dtype=np.int32)]
    states = [ct.StateType(wrapped_type=ct.TensorType(shape=tuple(module.kv_cache.shape), dtype=np.float16),
                           name="kv_cache")]
    ml = _convert(module, example, inputs, [ct.TensorType(name="output_hidden_states", dtype=np.float16)], states)
    return palettize(ml, lut)


def save(mlmodel, path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    mlmodel.save(str(path))
    normalize_package(path)


def combine(infer_pkg: Path, prefill_pkg: Path, out: Path) -> None:
    """One multifunction package (`infer` default, `prefill`); identical weights are stored once."""
    import coremltools as ct

    desc = ct.utils.MultiFunctionDescriptor()
    desc.add_function(str(infer_pkg), src_function_name="main", target_function_name="infer")
    desc.add_function(str(prefill_pkg), src_function_name="main", target_function_name="prefill")
    desc.default_function_name = "infer"
    if out.exists():
        shutil.rmtree(out)
    ct.utils.save_multifunction(desc, str(out))
    normalize_package(out)


def _det_uuid(text: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(text.encode()).digest()[:16])).upper()


def normalize_package(path: Path) -> None:
    """Make a saved .mlpackage byte-deterministic: coremltools names the items of Manifest.json with
    fresh random UUIDs; replace each by a UUID derived from the item's path (same format), and write
    the JSON with sorted keys."""
    manifest = path / "Manifest.json"
    data = json.loads(manifest.read_text())
    items = data.get("itemInfoEntries", {})
    renamed = {}
    for old, entry in items.items():
        new = _det_uuid(entry.get("path", old))
        renamed[new] = entry
        if data.get("rootModelIdentifier") == old:
            data["rootModelIdentifier"] = new
    data["itemInfoEntries"] = renamed
    manifest.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")
