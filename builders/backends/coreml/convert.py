"""Conversion of the parts: torch trace -> ct.convert (mlprogram, fp16, iOS18) -> save, then optional
k-means LUT palettization in its own process (palettize.py); FFN + prefill combined into one
multifunction package at the file level (multifunction.py). Saved packages are made byte-deterministic
(package.py `normalize_package`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from builders.archs import DecoderConfig
from builders.backends.coreml import parts
from builders.backends.coreml.options import Lut, lut_padding
from builders.backends.coreml.package import save
from builders.backends.coreml.weights import Weights

DEPLOYMENT_TARGET = "iOS18"
KMEANS_WORKERS = 2


class Source:
    """The HF checkpoint for the conversion: config fields, its tensors (weights.Weights: read one at a
    time from the safetensors files as fp16, no model instance) and the rope tables for `context` (from the
    architecture's own rotary embedding module, built from the config alone)."""

    def __init__(self, model_dir: Path, context: int):
        from transformers import AutoConfig

        c = AutoConfig.from_pretrained(model_dir)  # the architecture's rotary embedding module is built from it
        self.config = c
        d = DecoderConfig.read(model_dir)
        self.cfg = {"heads": d.heads, "kv_heads": d.kv_heads, "head_dim": d.head_dim, "eps": d.norm_eps,
                    "context": context, "hidden": d.hidden, "vocab": d.vocab, "layers": d.layers}
        self.state = Weights(model_dir, parts.DTYPE)  # read as the programs' fp16: no checkpoint-dtype copy
        self.rope = rope_tables(c, context)

    def layer(self, i: int) -> dict:
        return self.state.layer(i)


def rope_tables(config, context: int):
    """(cos, sin) [context, head_dim] in float32 from the architecture's RotaryEmbedding module (rope
    scaling included), the same module transformers runs."""
    import importlib

    import torch

    module = importlib.import_module(f"transformers.models.{config.model_type}.modeling_{config.model_type}")
    (cls,) = [getattr(module, n) for n in dir(module) if n.endswith("RotaryEmbedding") and not n.startswith("_")]
    with torch.no_grad():
        pos = torch.arange(context).unsqueeze(0)
        cos, sin = cls(config)(torch.zeros(1, context, dtype=torch.float32), pos)
    return cos[0], sin[0]


def _fp16_overflow(op) -> bool:
    """coremltools' FP16ComputePrecision.fp16_overflow (does an fp32 const input of `op` hold a finite value
    outside the fp16 range?) without its temporaries: coremltools indexes |value| with np.where, one int64
    array per dimension - 40 bytes per element of an LM head split (778 MB for a 15200 x 896 one). Same
    answer: the largest |v| below 1e38 (larger ones are infinities, which may become fp16 inf) > 65504,
    a block of rows at a time."""
    for inputs in op.inputs.values():
        for var in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
            if var.op is None or var.op.op_type != "const" or not var.is_tensor_or_scalar_of(dtype="fp32"):
                continue
            flat = np.asarray(var.op.val.val).reshape(-1)
            for i in range(0, flat.size, OVERFLOW_BLOCK):
                a = np.abs(flat[i:i + OVERFLOW_BLOCK])
                if np.max(a, where=a < 1e38, initial=0.0) > 65504:
                    return True
    return False


OVERFLOW_BLOCK = 1 << 20  # elements per block of the fp16 overflow check


def _light_fp16_overflow_check() -> None:
    """Install _fp16_overflow in coremltools' fp16 pass (coremltools 9.0; a version without that static
    method keeps its own check)."""
    from coremltools.converters.mil.mil.passes.defs import quantization

    cls = getattr(quantization, "FP16ComputePrecision", None)
    if cls is not None and isinstance(cls.__dict__.get("fp16_overflow"), staticmethod):
        if cls.__dict__["fp16_overflow"].__func__ is not _fp16_overflow:
            COREMLTOOLS_FP16_OVERFLOW.append(cls.__dict__["fp16_overflow"].__func__)  # kept for the tests
        cls.fp16_overflow = staticmethod(_fp16_overflow)


COREMLTOOLS_FP16_OVERFLOW: list = []


def _convert(module, example: tuple, inputs: list, outputs: list, states: list | None = None):
    import coremltools as ct
    import torch

    _light_fp16_overflow_check()
    module.eval()
    with torch.no_grad():  # one forward pass: check_trace would run the module twice more (fp16 convs on the
        # CPU, the slowest part of a prefill chunk's conversion); step 8 checks the saved program's numbers
        traced = torch.jit.trace(module, example, check_trace=False)
    return ct.convert(traced, inputs=inputs, outputs=outputs, states=states or None,
                      minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
                      compute_precision=ct.precision.FLOAT16, convert_to="mlprogram", skip_model_load=True)


def embeddings(src: Source, batch: int, lut: Lut | None = None):
    import coremltools as ct
    import torch

    table = src.state["model.embed_tokens.weight"]
    module = parts.Embeddings(table, lut_padding(table.shape[0], lut))
    del table  # the checkpoint's copy: the module holds its fp16 one (a vocabulary-sized matrix less in memory)
    shape = ct.EnumeratedShapes(shapes=[[1, 1], [1, batch]], default=[1, 1])
    ml = _convert(module, (torch.zeros(1, 1, dtype=torch.int32),),
                  [ct.TensorType(name="input_ids", shape=shape, dtype=np.int32)],
                  [ct.TensorType(name="hidden_states", dtype=np.float16)])
    return ml


def lm_head(src: Source, sizes: list[int] | int, argmax: bool, lut: Lut | None = None):
    """The LM head split in parts of `sizes` rows (Layout.split_sizes; an int N: N near-equal parts), each
    padded to the LUT group when it is not a multiple of it."""
    import coremltools as ct
    import torch

    weight = src.state["lm_head.weight"]
    if isinstance(sizes, int):
        sizes = [len(w) for w in torch.tensor_split(weight, sizes, dim=0)]
    module = parts.LmHead(weight, sizes, argmax, lut.group_size if lut else 1)
    del weight  # the checkpoint's copy: the module holds its fp16 one
    names = ["argmax_idx", "argmax_val"] if argmax else [f"logits{i + 1}" for i in range(len(sizes))]
    ml = _convert(module, (torch.zeros(1, 1, src.cfg["hidden"], dtype=parts.DTYPE),),
                  [ct.TensorType(name="hidden_states", shape=(1, 1, src.cfg["hidden"]), dtype=np.float16)],
                  [ct.TensorType(name=n) for n in names])
    return ml


def chunk(src: Source, layers: range, last: bool, seq: int):
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
    return ml


def save_part(mlmodel, path: Path, lut: Lut | None, work: Path, op_types: tuple[str, ...] = ("conv",)) -> None:
    """Save a converted part; with a LUT, the fp16 program is kept in `work` (fp16_path(); the LUT
    reconstruction check reads it) and palettized into `path` in a separate process (palettize.py).
    A missing LUT output is an error, never replaced by the fp16 file."""
    if lut is None:
        save(mlmodel, path)
        return
    from builders.backends.coreml.heap import return_free_heap
    from builders.backends.coreml.palettize import palettize_package

    fp16 = fp16_path(work, path.name)
    fp16.parent.mkdir(parents=True, exist_ok=True)
    save(mlmodel, fp16)
    # coremltools keeps the converted program, every weight in it, on the model (MLModel._mil_program); the
    # palettizing process reads the saved package, so this one need not hold a second copy meanwhile
    mlmodel._mil_program = None
    return_free_heap()
    if path.exists():
        shutil.rmtree(path)
    palettize_package(fp16, path, lut.bits, lut.group_size, op_types, KMEANS_WORKERS, cache=work / "lut-cache")


def fp16_path(work: Path, name: str) -> Path:
    return work / "fp16" / name


def combine(infer_pkg: Path, prefill_pkg: Path, out: Path) -> None:
    """One multifunction package (`infer` default, `prefill`); identical weights are stored once. Written
    at the file level (multifunction.py): no weight is loaded, where coremltools' save_multifunction held
    both programs' weights (0.5B fp16 chunk: 2 x 683 MB, the node's peak)."""
    from builders.backends.coreml import multifunction

    multifunction.combine([("infer", infer_pkg), ("prefill", prefill_pkg)], "infer", out)
