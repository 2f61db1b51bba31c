"""GGUF backend: llama.cpp's own converter and quantizer, pinned in the `gguf` image.

Nodes: `gguf-convert` (convert_hf_to_gguf.py: F32/F16/BF16/Q8_0) and `gguf-quantize`
(llama_cpp.llama_model_quantize from the F16 file). GGUF files are target-independent: every target
cell of a quant maps to the same node. Each node loads its file with llama.cpp and compares logits with
the transformers reference before it may be promoted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from builders.backends.base import Cell, ModelRef, NodeContext, NodeDef
from builders.errors import MatrixError, NodeFailed

CONVERTER = Path("/opt/llama.cpp/convert_hf_to_gguf.py")  # in the gguf image (docker/gguf.Dockerfile.j2)


@dataclass(frozen=True)
class GgufQuant:
    code: str
    tool: str  # "convert" (convert_hf_to_gguf --outtype) or "quantize" (llama_model_quantize)
    arg: str  # outtype for convert, LLAMA_FTYPE_* name for quantize
    bits: float  # approximate bits per weight
    qat: bool = False  # keep token embeddings and output at Q8_0 (for QAT checkpoints)


QUANTS: dict[str, GgufQuant] = {q.code: q for q in [
    GgufQuant("F32", "convert", "f32", 32),
    GgufQuant("F16", "convert", "f16", 16),
    GgufQuant("BF16", "convert", "bf16", 16),
    GgufQuant("Q8_0", "convert", "q8_0", 8.5),
    GgufQuant("Q6_K", "quantize", "LLAMA_FTYPE_MOSTLY_Q6_K", 6.56),
    GgufQuant("Q5_K_M", "quantize", "LLAMA_FTYPE_MOSTLY_Q5_K_M", 5.67),
    GgufQuant("Q4_K_M", "quantize", "LLAMA_FTYPE_MOSTLY_Q4_K_M", 4.89),
    GgufQuant("Q4_0", "quantize", "LLAMA_FTYPE_MOSTLY_Q4_0", 4.5),
    GgufQuant("Q4_0-QAT", "quantize", "LLAMA_FTYPE_MOSTLY_Q4_0", 4.5, qat=True),
    GgufQuant("Q4_K_M-QAT", "quantize", "LLAMA_FTYPE_MOSTLY_Q4_K_M", 4.89, qat=True),
]}
SOURCE_QUANT = "F16"  # every quantization starts from this conversion
OPTIONS = {"n_threads": 2, "n_ctx": 512}


def sliding_window_reason(config: Mapping[str, Any]) -> str | None:
    """Why a model whose attention is windowed has no faithful GGUF, else None. llama.cpp's converter writes
    no sliding window for Llama/Mistral/Qwen2: the GGUF attends to every earlier token and its logits
    differ from the original's once a text is longer than the window."""
    window = config.get("sliding_window")
    context = config.get("max_position_embeddings")
    if not window or config.get("use_sliding_window") is False or (context and window >= context):
        return None
    return (f"llama.cpp's converter drops the sliding window (sliding_window {window} < max_position_embeddings "
            f"{context}): outputs differ beyond {window} tokens")


class GgufBackend:
    name = "gguf"
    image = "gguf"
    quants = QUANTS
    # llama.cpp runs the same file on all of these; webgpu and the ANE are not llama.cpp targets
    targets = ("cpu", "cuda", "vulkan", "vulkan-windows", "android", "iphone", "metal", "metal_x86_64")
    archs = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")
    code = ("backends/gguf.py",)

    def normalize_options(self, options: Mapping[str, Any], where: str) -> dict[str, Any]:
        out = dict(OPTIONS)
        for k, v in options.items():
            if k not in OPTIONS:
                raise MatrixError(f"{where}: unknown gguf option '{k}'; known: {', '.join(OPTIONS)}")
            if not isinstance(v, int) or v <= 0:
                raise MatrixError(f"{where}: gguf option {k}={v!r} must be a positive integer")
            out[k] = v
        return out

    def unsupported(self, cell: Cell, model: ModelRef) -> str | None:
        return sliding_window_reason(model.config)

    def unavailable(self, cell: Cell) -> str | None:
        return None

    def _node(self, model: ModelRef, quant: str, options: dict) -> NodeDef:
        q = QUANTS[quant]
        parents = {"reference": f"{model.name}.reference"}
        if q.tool == "quantize":
            parents["source"] = f"{model.name}.gguf.{SOURCE_QUANT}"
        return NodeDef(key=f"{model.name}.gguf.{quant}", kind=f"gguf-{q.tool}", backend="gguf", image="gguf",
                       params={"quant": quant, "model_name": model.name, "verify": {
                           "n_threads": options["n_threads"], "n_ctx": options["n_ctx"]}},
                       parents=parents, publish="gguf")

    def expand(self, cell: Cell, model: ModelRef) -> list[NodeDef]:
        nodes = []
        if QUANTS[cell.quant].tool == "quantize":
            nodes.append(self._node(model, SOURCE_QUANT, dict(cell.options)))
        nodes.append(self._node(model, cell.quant, dict(cell.options)))
        return nodes

    def steps(self, kind: str):
        if kind == "gguf-convert":
            return [("convert", step_convert), ("verify", step_verify)]
        if kind == "gguf-quantize":
            return [("quantize", step_quantize), ("verify", step_verify)]
        raise NodeFailed(f"gguf backend has no node kind '{kind}'")


# ---- run side (inside the gguf image) -------------------------------------------------------------

def _tool_versions() -> dict:
    tools = Path("/etc/buildmatrix/tools.json")
    info = json.loads(tools.read_text()) if tools.is_file() else {}
    llama_cpp = info.get("llama_cpp", {})
    return {"llama.cpp": llama_cpp, "llama_cpp_python": info.get("llama_cpp_python"),
            "gguf-py": llama_cpp.get("gguf_py_version") or info.get("pip", {}).get("gguf")}


def _gguf_file(out: Path) -> Path:
    files = sorted(out.glob("*.gguf"))
    if len(files) != 1:
        raise NodeFailed(f"expected exactly one .gguf in the node output, found {len(files)}")
    return files[0]


def step_convert(ctx: NodeContext) -> None:
    q = QUANTS[ctx.params["quant"]]
    cmd = [sys.executable, str(CONVERTER), str(ctx.model_dir), "--outtype", q.arg,
           "--outfile", str(ctx.out) + "/", "--model-name", ctx.params["model_name"]]
    ctx.log(" ".join(cmd))
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise NodeFailed(f"llama.cpp convert_hf_to_gguf.py --outtype {q.arg} exited {proc.returncode}; see the log")
    _gguf_file(ctx.out)
    ctx.result["tool_versions"] = _tool_versions()


def _quantized_name(src: Path, quant: str) -> str:
    """llama.cpp's naming convention: <BaseName>-<SizeLabel>-<Encoding>.gguf — swap the encoding part."""
    stem = src.stem
    if not stem.endswith("-" + SOURCE_QUANT):
        raise NodeFailed(f"source file {src.name} does not follow <name>-{SOURCE_QUANT}.gguf")
    return stem[: -len(SOURCE_QUANT)] + quant + ".gguf"


def step_quantize(ctx: NodeContext) -> None:
    import llama_cpp  # noqa: PLC0415

    q = QUANTS[ctx.params["quant"]]
    src = _gguf_file(ctx.inputs["source"])
    dst = ctx.out / _quantized_name(src, q.code)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, q.arg)
    params.nthread = 2
    if q.qat:
        params.token_embedding_type = llama_cpp.GGML_TYPE_Q8_0
        params.output_tensor_type = llama_cpp.GGML_TYPE_Q8_0
    ctx.log(f"llama_model_quantize {src.name} -> {dst.name} ({q.arg}{', QAT' if q.qat else ''})")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise NodeFailed(f"llama_model_quantize to {q.code} returned {rc}")
    ctx.result["tool_versions"] = _tool_versions()


def _file_facts(path: Path) -> dict:
    from gguf import GGUFReader  # noqa: PLC0415

    r = GGUFReader(str(path))
    field = r.fields.get("GGUF.version")
    version = int(field.parts[field.data[0]][0]) if field else None
    types: dict[str, int] = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    arch = r.fields["general.architecture"]
    return {"gguf_version": version, "architecture": bytes(arch.parts[arch.data[0]]).decode(),
            "tensor_types": dict(sorted(types.items())), "tensors": len(r.tensors)}


def step_verify(ctx: NodeContext) -> None:
    import numpy as np  # noqa: PLC0415
    from llama_cpp import Llama  # noqa: PLC0415

    from builders.verify.metrics import evaluate, verdict  # noqa: PLC0415

    path = _gguf_file(ctx.out)
    facts = _file_facts(path)
    ctx.result["runtime_abi"] = {"gguf_version": facts["gguf_version"], "architecture": facts["architecture"],
                                 "llama.cpp": (ctx.result.get("tool_versions") or {}).get("llama.cpp")}
    ctx.result["gguf"] = facts
    vp = ctx.params["verify"]
    llm = Llama(model_path=str(path), n_ctx=vp["n_ctx"], n_batch=vp["n_ctx"], logits_all=True,
                n_threads=vp["n_threads"], seed=0, verbose=False)

    def forward(tokens):
        llm.reset()
        llm.eval([int(t) for t in tokens])
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)

    figures = evaluate(ctx.inputs["reference"], forward)
    ctx.result["verification"] = verdict(figures, ctx.params.get("thresholds"))
    ctx.log("verify: " + ", ".join(f"{k}={v:.4g}" for k, v in figures.items() if isinstance(v, float)))


BACKEND = GgufBackend()
