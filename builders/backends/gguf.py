"""GGUF backend: llama.cpp's own converter and quantizer, pinned in the `gguf` image.

Nodes: `gguf-convert` (convert_hf_to_gguf.py: F32/F16/BF16/Q8_0) and `gguf-quantize`
(llama_cpp.llama_model_quantize from the F16 file). GGUF files are target-independent: every target
cell of a quant maps to the same quant node. Each node loads its file with llama.cpp and compares logits with
the transformers reference before it may be promoted. Targets with a runtime image of their own (vulkan,
vulkan-windows, android: builders/backends/gguf_runtime.py) add a `gguf-runtime` node after it: the same
file plus llama.cpp built for that target, verified by running that build here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from builders import rss
from builders.archs import DecoderConfig, drops, supported
from builders.backends import gguf_runtime
from builders.backends.base import REFERENCE, Cell, ModelRef, NodeContext, NodeDef
from builders.errors import NodeFailed
from builders.executors import MALLOC_ENV
from builders.options import Option, OptionSet
from builders.verify import gguf_types
from builders.verify.fp32_compute import cpu_threads

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
# n_threads caps the verify threads; by default every CPU of the node's affinity mask is used (the figures do
# not depend on it bit for bit, and they are manifest-only: no digest holds them)
# upper bounds: n_ctx sizes llama.cpp's KV cache for verification (128k tokens is the largest context of the
# supported families); more threads than this only oversubscribes a build host
OPTIONS = OptionSet("gguf", [
    Option("n_threads", int, 256, "most threads llama.cpp verifies with (capped by the CPUs the node may use)",
           what="a positive integer at most 256",
           check=lambda v: 0 < v <= 256),
    Option("n_ctx", int, 512, "most llama.cpp context (KV cache tokens) for verification; the check sizes it to the "
           "tokens it scores (all sequences in one batch)",
           what="a positive integer at most 131072", check=lambda v: 0 < v <= 131072),
])


def sliding_window_reason(c: DecoderConfig) -> str | None:
    """Why a model whose attention is windowed has no faithful GGUF, else None. For the families whose
    window llama.cpp drops (archs.py `drops`: all of them today) the GGUF attends to every earlier token
    and its logits differ from the original's once a text is longer than the window."""
    if "sliding_window" not in drops("gguf", c.hf_arch) or not c.window_below(None):
        return None
    return (f"llama.cpp's converter drops the sliding window (sliding_window {c.sliding_window} < "
            f"max_position_embeddings {c.max_positions}): outputs differ beyond {c.sliding_window} tokens")


class GgufBackend:
    name = "gguf"
    image = "gguf"
    quants = QUANTS
    # llama.cpp runs the same file on all of these; webgpu and the ANE are not llama.cpp targets
    targets = ("cpu", "cuda", "vulkan", "vulkan-windows", "android", "iphone", "metal", "metal_x86_64")
    archs = supported("gguf")
    options = OPTIONS
    # the README's support matrix: what a cell of each target holds and where its logits come from
    target_notes = {"cpu": "llama-cpp-python, verified here",
                    **{t: f"+ llama.cpp runtime bundle, verified here: {rt.runs_on}"
                       for t, rt in gguf_runtime.RUNTIMES.items()},
                    **{t: "the cpu cell's file (no runtime built or run for this target)"
                       for t in ("cuda", "iphone", "metal", "metal_x86_64")}}
    code = ("backends/gguf.py", "gguf_file.py", "verify/llama_batch.py", "verify/tokenizer_check.py",
            "verify/gguf_types.py", "verify/gguf_weights.py",
            "verify/hf_forward.py", "verify/fp32_compute.py")
    # the runtime node's own code: editing it re-digests the runtime nodes only, never the GGUF files
    kind_code = {"gguf-runtime": ("backends/gguf_runtime.py",)}

    def normalize_options(self, options: Mapping[str, Any], where: str) -> dict[str, Any]:
        return OPTIONS.normalize(options, where)

    def unsupported(self, cell: Cell, model: ModelRef) -> str | None:
        return sliding_window_reason(model.decoder)

    def unavailable(self, cell: Cell) -> str | None:
        return None

    def _node(self, model: ModelRef, quant: str, options: dict) -> NodeDef:
        q = QUANTS[quant]
        parents: dict = {"reference": REFERENCE}
        if q.tool == "quantize":
            parents["source"] = self._node(model, SOURCE_QUANT, options)
        return NodeDef(key=f"{model.name}.gguf.{quant}", kind=f"gguf-{q.tool}", backend="gguf", image="gguf",
                       params={"quant": quant, "model_name": model.name, "verify": {
                           "n_threads": options["n_threads"], "n_ctx": options["n_ctx"]}},
                       parents=parents, publish="gguf", outputs=("*.gguf",), verify_quant=quant)

    def expand(self, cell: Cell, model: ModelRef) -> list[NodeDef]:
        node = self._node(model, cell.quant, dict(cell.options))
        nodes = [node.parents["source"], node] if "source" in node.parents else [node]
        if cell.target in gguf_runtime.RUNTIMES:
            nodes.append(gguf_runtime.node(model.name, cell.quant, cell.target, node, node.params["verify"]))
        return nodes

    def steps(self, kind: str):
        if kind == "gguf-convert":
            return [("convert", step_convert), ("verify", step_verify), ("verify_tokenizer", step_verify_tokenizer)]
        if kind == "gguf-quantize":
            return [("quantize", step_quantize), ("verify", step_verify), ("verify_tokenizer", step_verify_tokenizer)]
        if kind == "gguf-runtime":
            return list(gguf_runtime.STEPS)
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
    # the converter runs as a direct call would: without the node process's malloc / OpenMP settings
    # (builders/executors MALLOC_ENV), which tune the node's own checks, not upstream's tool
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, env=env)
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
    params.nthread = cpu_threads()  # llama.cpp's quantized blocks do not depend on the thread count
    if q.qat:
        params.token_embedding_type = llama_cpp.GGML_TYPE_Q8_0
        params.output_tensor_type = llama_cpp.GGML_TYPE_Q8_0
    ctx.log(f"llama_model_quantize {src.name} -> {dst.name} ({q.arg}{', QAT' if q.qat else ''})")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise NodeFailed(f"llama_model_quantize to {q.code} returned {rc}")
    ctx.result["tool_versions"] = _tool_versions()


def _file_facts(gf) -> dict:
    """Format facts of the file for the manifest (gf: builders.gguf_file.GgufFile)."""
    tensors = [(t.name, gf.type_name(t), len(t.dims)) for t in gf.tensors]
    return {"gguf_version": gf.version, "architecture": gf.kv.get("general.architecture"),
            "tensor_types": gguf_types.histogram(tensors), "tensors": len(tensors), "_tensors": tensors}


def _threads(vp: dict) -> int:
    """The verify threads: the n_threads option, at most the CPUs this process may use."""
    return max(1, min(vp["n_threads"], cpu_threads()))


def _hf_model(ctx: NodeContext):
    """The HF model the dequantized weights go into (importing torch and transformers: seconds)."""
    from builders.verify.hf_forward import HfModel  # noqa: PLC0415

    return HfModel(ctx.model_dir, threads=_threads(ctx.params["verify"]))


def _dequantized_logits(ctx: NodeContext, gf, hf=None) -> tuple[list, dict]:
    """transformers fp32 carrying the file's own dequantized weights, on the runtime check's positions (the
    first prompts: verify/budget.py "runtime"): ([logits per prompt], info). The weights are dequantized
    when their module runs, those prompts in one batched pass (verify/hf_forward.py): each tensor is
    dequantized once and never the whole fp32 model is held."""
    from builders.verify import budget, gguf_weights  # noqa: PLC0415
    from builders.verify.metrics import load_prompt_tokens  # noqa: PLC0415

    hf = hf if hf is not None else _hf_model(ctx)
    try:
        loaded = gguf_weights.load_into(gf, list(hf.params), hf.put, lazy=True)
    except (gguf_weights.WeightsError, KeyError, ValueError) as e:
        raise NodeFailed(f"dequantized-weights check: {e}") from None
    missing = hf.missing()
    if missing:
        raise NodeFailed(f"dequantized-weights check: the .gguf has no tensor for {', '.join(missing[:3])}")
    sequences = load_prompt_tokens(ctx.inputs["reference"])
    sequences = sequences[: budget.runtime_prompts([len(s) for s in sequences])]  # verify/budget.py "runtime"
    try:
        dq = hf.forward_batch(sequences)
    except (KeyError, ValueError) as e:
        raise NodeFailed(f"dequantized-weights check: {e}") from None
    return dq, {"compared": "llama.cpp logits vs transformers fp32 on the file's own dequantized weights (ggml's "
                            "reference dequantizers for quantized tensors)", "tensors": len(loaded)}


def _runtime_figures(dq: list, art_logits: list, info: dict) -> tuple[dict, dict]:
    """llama.cpp's logits vs _dequantized_logits' on the same positions: separates "the converter/runtime is
    wrong" from "the quantization lost accuracy"."""
    from builders.verify.metrics import compare  # noqa: PLC0415

    if len(art_logits) < len(dq):
        raise NodeFailed(f"dequantized-weights check: llama.cpp gave {len(art_logits)} of {len(dq)} prompts' logits")
    figures = compare(dq, list(art_logits[: len(dq)]))
    info = {**info, "positions": figures["positions"]}
    return {f"runtime_{k}": v for k, v in figures.items() if k != "positions"}, info


def step_verify(ctx: NodeContext) -> None:
    import numpy as np  # noqa: PLC0415

    from builders.gguf_file import GgufFile  # noqa: PLC0415
    from builders.verify import budget, llama_batch  # noqa: PLC0415
    from builders.verify.metrics import evaluate_many, verdict  # noqa: PLC0415

    quant = ctx.params["quant"]
    path = _gguf_file(ctx.out)
    vp = ctx.params["verify"]
    # The dequantized-weights side of the runtime check runs on a second thread from the start: torch and
    # transformers import (seconds of single-threaded Python), the HF model is built and run on the runtime
    # prompts while llama.cpp loads and decodes here (C, the GIL released); it needs only the prompts' tokens.
    # Its ~300 MiB of imports and one fp32 matrix at a time sit beside llama.cpp's model: that fits the memory
    # rule because no vocabulary-wide logits are copied (the reference's are memory-mapped, llama.cpp's read
    # in place) and the perplexity text is scored only when a threshold reads it (verify/budget.py)
    file_ready: Future = Future()

    def dequantized_side():
        try:  # the file's header first (Python), while this thread has the GIL to itself (llama.cpp runs in C)
            gf = GgufFile(path)
        except BaseException as e:
            file_ready.set_exception(e)
            raise
        file_ready.set_result(gf)
        return _dequantized_logits(ctx, gf, _hf_model(ctx))

    pool = ThreadPoolExecutor(max_workers=1)
    dequantized = pool.submit(dequantized_side)
    try:
        art_logits: list = []
        t0 = time.monotonic()
        with ExitStack() as llama_cpp_open:
            def forward_many(sequences):
                """All sequences in one llama.cpp decode (verify/llama_batch.py), within the n_ctx option; the
                logits are views of llama.cpp's buffer until llama_cpp_open closes."""
                n_ctx = llama_batch.context_size([len(s) for s in sequences])
                if n_ctx > vp["n_ctx"]:
                    raise NodeFailed(f"the check evaluates {n_ctx} KV cells but gguf option n_ctx is {vp['n_ctx']}: "
                                     f"raise backends.gguf.options.n_ctx in matrix.yaml to at least {n_ctx}")
                try:
                    return llama_cpp_open.enter_context(llama_batch.decoded(path, sequences, _threads(vp)))
                except llama_batch.LlamaCppError as e:
                    raise NodeFailed(f"llama.cpp on {path.name}: {e}") from None

            figures = evaluate_many(ctx.inputs["reference"], forward_many,
                                    with_text=budget.scores_text(ctx.params.get("thresholds")), keep=art_logits)
            # the runtime check's prompts outlive llama.cpp's context: copies of just those
            art_logits = [np.array(a) for a in art_logits[: budget.runtime_prompts([len(a) for a in art_logits])]]
        t_llama, peak_llama = time.monotonic() - t0, rss.peak_mb()
        t0 = time.monotonic()
        gf = file_ready.result()
        facts = _file_facts(gf)
        fallback = gguf_types.fallback(quant, facts.pop("_tensors"))
        ctx.result["runtime_abi"] = {"gguf_version": facts["gguf_version"], "architecture": facts["architecture"],
                                     "llama.cpp": (ctx.result.get("tool_versions") or {}).get("llama.cpp")}
        ctx.result["gguf"] = facts
        ctx.result["tensor_types"] = facts["tensor_types"]
        ctx.result["quant_fallback"] = fallback
        dq, info = dequantized.result()
    finally:
        pool.shutdown()
    runtime, info = _runtime_figures(dq, art_logits, info)
    ctx.log(f"verify: llama.cpp and figures {t_llama:.1f}s (peak {peak_llama} MiB), then waited "
            f"{time.monotonic() - t0:.1f}s for the dequantized-weights reference (peak {rss.peak_mb()} MiB)")
    figures.update(runtime)
    ver = verdict(figures, ctx.params.get("thresholds"), where=f"gguf {quant}", require=("runtime_",))
    ver["runtime_check"] = info
    if fallback:
        ver["warnings"] = [gguf_types.warning(fallback)]
        ctx.log("WARNING " + ver["warnings"][0] + ": " + ", ".join(fallback["tensors"][:6]))
    ctx.result["verification"] = ver
    ctx.log("verify: " + ", ".join(f"{k}={v:.4g}" for k, v in figures.items() if isinstance(v, float)))


def tokenizer_result(path: Path, reference_dir: Path) -> dict:
    """llama.cpp's tokenizer on the file (vocab only): add_special as llama.cpp decides from the file's
    tokenizer.ggml.add_bos_token / pre-tokenizer defaults, no parsing of special-token text."""
    from llama_cpp import Llama  # noqa: PLC0415

    from builders.verify import tokenizer_check  # noqa: PLC0415

    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    meta = vocab.metadata
    result = tokenizer_check.check(
        reference_dir, lambda text: vocab.tokenize(text.encode("utf-8"), add_bos=True, special=False),
        vocab.token_bos() if vocab.token_bos() >= 0 else None, [vocab.token_eos()],
        f"llama.cpp vocab_only on {path.name}")
    result["file"] = {k: meta.get(f"tokenizer.ggml.{k}") for k in ("model", "pre", "add_bos_token", "add_eos_token",
                                                                  "bos_token_id", "eos_token_id")}
    return result


def step_verify_tokenizer(ctx: NodeContext) -> None:
    from builders.verify import tokenizer_check  # noqa: PLC0415

    result = tokenizer_result(_gguf_file(ctx.out), ctx.inputs["reference"])
    ctx.result["verification"] = tokenizer_check.merge(ctx.result.get("verification"), result)
    ctx.log("verify_tokenizer: " + ("ok" if result["passed"] else "; ".join(result["failures"])))


BACKEND = GgufBackend()
