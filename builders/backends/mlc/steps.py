"""Run side of the mlc backend: the steps of `mlc-weights` and `mlc-lib` nodes (inside the mlc image).

mlc-weights: convert_weight -> gen_config -> verify_quant -> verify_tokenizer
mlc-compile: compile (from the architecture + config in the params; reads no model)
mlc-lib:     library (the compiled library under the model's name) -> verify (cpu: run against the
             reference, figures also written next to the library; other targets: structural, plus the cpu
             library's figures for the same weights)
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from builders.backends.base import NodeContext
from builders.backends.mlc import compile as compile_mod
from builders.backends.mlc import convert_weight, gen_config, inspect_lib
from builders.backends.mlc.models import ModelConfig, parameters
from builders.backends.mlc.quant import QUANTS, MlcQuant, error_bound
from builders.backends.mlc.targets import TARGETS
from builders.verify import budget
from builders.errors import NodeFailed

LIB_VS_DEQUANT_MAX = 1e-2  # library vs transformers on the same dequantized weights, max |Δlogit|
# float16 codes compute activations in float16 (as MLC's libraries do): allow 4 float16 units of
# roundoff of the largest logit when that is larger (measured: tiny Qwen2 q4f16_1 0.013 at max|logit| ~20)
F16_ULPS = 4 * 2.0**-11
TOOLS_JSON = Path("/etc/buildmatrix/tools.json")
REPRO_NOTE = ("library bytes are not bit-identical across builds with apache-tvm 0.27.0.post1 (measured: its "
              "code generator orders a few instructions differently run to run); weights and archives' "
              "metadata are deterministic")


def _setup(ctx: NodeContext) -> tuple[dict, ModelConfig, MlcQuant]:
    hf = ctx.load_json(ctx.model_dir / "config.json")
    q = QUANTS.get(ctx.params["quant"])
    if q is None:
        raise NodeFailed(f"unknown mlc quant '{ctx.params['quant']}'")
    return hf, ModelConfig.from_hf(hf, ctx.params.get("options") or {}), q


def _tools_json() -> dict:
    return json.loads(TOOLS_JSON.read_text()) if TOOLS_JSON.is_file() else {}


def tool_versions() -> dict:
    import tvm

    info = _tools_json()
    pip = info.get("pip", {})
    return {"apache-tvm": getattr(tvm, "__version__", None), "apache-tvm-ffi": pip.get("apache-tvm-ffi"),
            "cuda_toolkit": info.get("cuda"), "python": platform.python_version()}


# ---- mlc-weights ----------------------------------------------------------------------------------

def step_convert_weight(ctx: NodeContext) -> None:
    hf, c, q = _setup(ctx)
    ctx.result["weights"] = convert_weight.convert(ctx.model_dir, ctx.out, c, q, hf["architectures"][0], ctx.log)
    ctx.result["runtime_abi"] = {"weights_format": "tensor-cache.json (raw-shard)", "quantization": q.code,
                                 "layout": q.layout if q.bits else None}


def step_gen_config(ctx: NodeContext) -> None:
    hf, c, q = _setup(ctx)
    cfg = gen_config.write(ctx.model_dir, ctx.out, hf, c, q, (ctx.params.get("options") or {}).get("conv_template"))
    ctx.result["chat_config"] = {"conv_template": cfg["conv_template"]["name"],
                                 "tokenizer_files": cfg["tokenizer_files"],
                                 "context_window_size": cfg["context_window_size"]}


def step_verify_quant(ctx: NodeContext) -> None:
    """Per tensor: dequantize(stored) vs the original within the bound implied by bits and group size;
    unquantized tensors must equal the original cast to the model dtype."""
    from builders.backends.mlc.reference import dequantized

    hf, c, q = _setup(ctx)
    src = convert_weight.SafetensorsSource(ctx.model_dir)
    packed = convert_weight.read_cache(ctx.out)  # one tensor dequantized at a time below
    checks, failures = {}, []
    worst = 0.0
    for param in parameters(c, hf["architectures"][0]):
        name, shape = param.name, param.shape
        quantized = convert_weight.is_quantized(name, shape, q)
        # a row block at a time (read from the checkpoint and dequantized): no full-size float32 temporaries;
        # only a KN-stored quantized matrix (legacy _0 codes: rows are not stored apart) is taken whole
        by_rows = not quantized or q.layout == "NK" or name.endswith("embed_tokens.weight")
        blocks = convert_weight.row_blocks(shape[0]) if by_rows else [None]
        max_err, ratio, exact = 0.0, 0.0, True
        for rows in blocks:
            part = convert_weight.source_tensor(src, param, rows)
            stored = dequantized(packed, name, shape, q, rows=rows)
            err = np.abs(stored - part)
            max_err = max(max_err, float(err.max(initial=0.0)))
            if quantized:
                ratio = max(ratio, float((err / np.maximum(error_bound(part, q), 1e-30)).max(initial=0.0)))
            else:
                exact = exact and np.array_equal(stored, part.astype(q.model_dtype).astype(np.float32))
            del part, stored, err
        if quantized:
            worst = max(worst, ratio)
            checks[name] = {"max_abs_err": max_err, "max_err_over_bound": round(ratio, 4)}
            if ratio > 1.0:
                failures.append(f"{name}: quantization error {max_err:.3g} exceeds the {q.code} bound")
        else:
            checks[name] = {"max_abs_err": max_err, "exact_cast": exact}
            if not exact:
                failures.append(f"{name}: stored tensor differs from the original cast to {q.model_dtype}")
    summary = {"tensors": len(checks), "max_err_over_bound": round(worst, 4), "per_tensor": checks}
    ctx.result["verification"] = {"passed": not failures, "checks": {"quantization": summary},
                                  "thresholds": {"max_err_over_bound": 1.0}, "failures": failures}
    ctx.log(f"verify_quant: {len(checks)} tensors, worst error/bound {worst:.3f}")


def step_verify_tokenizer(ctx: NodeContext) -> None:
    """The shipped tokenizer files + mlc-chat-config.json (conversation prefix ids, bos/eos) tokenize the
    reference texts as the original model's tokenizer does (builders/verify/tokenizer_check.py)."""
    from builders.verify import tokenizer_check

    ctx.result["verification"] = tokenizer_check.merge(ctx.result.get("verification"), tokenizer_result(ctx.out, ctx.inputs["reference"]))
    ctx.log("verify_tokenizer: " + ("ok" if ctx.result["verification"]["checks"]["tokenizer"]["passed"]
                                    else "; ".join(ctx.result["verification"]["checks"]["tokenizer"]["failures"])))


def tokenizer_result(weights_dir: Path, reference_dir: Path) -> dict:
    """What MLC's runtime feeds for a prompt: the conversation's system_prefix_token_ids, then the
    tokenizer (tokenizer.json, else tokenizer.model) without special tokens; stop = stop ids + eos."""
    from builders.verify import tokenizer_check

    cfg = json.loads((weights_dir / "mlc-chat-config.json").read_text())
    prefix = cfg["conv_template"].get("system_prefix_token_ids") or []
    stop = list(cfg["conv_template"].get("stop_token_ids") or []) + tokenizer_check.ids_of(cfg.get("eos_token_id"))
    return tokenizer_check.check(reference_dir, tokenizer_check.hf_files_encoder(weights_dir, prefix),
                                 cfg.get("bos_token_id"), stop, "mlc-chat-config.json + " + ", ".join(cfg["tokenizer_files"]))


# ---- mlc-lib --------------------------------------------------------------------------------------

COMPILED_JSON = "library.json"  # what an mlc-compile node records next to its library (deterministic)


def lib_file(ctx: NodeContext) -> Path:
    from builders.backends.mlc import lib_file_name  # the name the node declares as its output

    return ctx.out / lib_file_name(ctx.params["lib_stem"], ctx.params["target"])


def _library_result(ctx: NodeContext, record: dict) -> None:
    """What both library nodes (compile, and its per-model copy) report from the compile record."""
    ctx.result["tool_versions"] = record["tool_versions"]
    ctx.result["runtime_abi"] = record["runtime_abi"]
    ctx.result["notes"] = [REPRO_NOTE]
    if record["deferred"]:
        ctx.result["deferred"] = record["deferred"]


def step_compile(ctx: NodeContext) -> None:
    """mlc-compile: the architecture and the model config come from the params, never from a model."""
    p = ctx.params
    q = QUANTS.get(p["quant"])
    if q is None:
        raise NodeFailed(f"unknown mlc quant '{p['quant']}'")
    c = ModelConfig(**p["model_config"])
    t = TARGETS[p["target"]]
    libcuda = compile_mod.ensure_libcuda() if t.name == "cuda" else None
    out = lib_file(ctx)
    prefix = None
    if t.system_lib:  # web-llm finds the VM through tvmjs's systemLib(), which has no prefix (one model a .wasm)
        prefix = "" if t.link == "emcc-tvmjs" else _prefix(ctx)
    facts = compile_mod.compile_lib({"architectures": [p["architecture"]]}, c, q, t, out, ctx.log,
                                    system_lib_prefix=prefix)
    if libcuda:
        facts["libcuda_at_build"] = libcuda
    versions = tool_versions()
    deferred = []
    if t.deferred:
        deferred.append({"step": "link", "reason": t.deferred})
    glue = None
    if t.link == "emcc-tvmjs":  # what tvmjs's emcc glue (built in the webgpu image) provides as imports
        glue = inspect_lib.glue_imports((compile_mod.WEB_RUNTIME / "tvmjs_runtime.wasi.js").read_text())
        facts["wasm"], link_failures = inspect_lib.check_wasm(out, glue)
        if link_failures:
            raise NodeFailed("; ".join(link_failures))
        versions["emscripten"] = _tools_json().get("emscripten")
    record = {"file": out.name, "architecture": p["architecture"], "config_sha": p["config_sha"],
              "tool_versions": versions, "deferred": deferred, "tvmjs_glue_imports": glue,
              "runtime_abi": {"tvm": versions["apache-tvm"], "target": t.name, "tvm_target": t.tvm,
                              "tvm_host": t.host, "quantization": q.code, "system_lib_prefix": prefix,
                              "requires_cpu": _requires_cpu(t),
                              "entry_points": list(compile_mod.ENTRY_POINTS)}}
    (ctx.out / COMPILED_JSON).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    ctx.result["library"] = facts
    _library_result(ctx, record)


def _requires_cpu(t) -> dict | None:
    """The CPU a library's host code needs: the baseline and its features (None: no baseline pinned)."""
    from builders.backends.mlc.cpu_features import BASELINES

    if t.requires_cpu is None:
        return None
    return {"baseline": t.requires_cpu, "features": list(BASELINES[t.requires_cpu])}


def step_library(ctx: NodeContext) -> None:
    """mlc-lib: the shared compiled library, copied under this model's MLC name. The manifest says
    which compile node made it and whether that compile was done for another model (reuse-lib)."""
    compiled = ctx.inputs["compiled"]
    record = ctx.load_json(compiled / COMPILED_JSON)
    dest = lib_file(ctx)
    shutil.copyfile(compiled / record["file"], dest)
    parent = (ctx.spec.get("parents") or {}).get("compiled", {})
    built_for = parent.get("built_for")
    this = ctx.spec["model"]["name"]
    ctx.result["library"] = {
        "file": dest.name, "compiled_file": record["file"], "compiled_by": parent.get("key"),
        "compile_digest": parent.get("digest"), "architecture": record["architecture"],
        "config_sha": record["config_sha"], "compiled_for": built_for,
        "reused": bool(built_for) and built_for != this}
    if ctx.result["library"]["reused"]:
        ctx.log(f"library: reusing the {record['file']} compiled for {built_for} (same architecture, quant, config)")
    _library_result(ctx, record)


def _prefix(ctx: NodeContext) -> str:
    """MLC's system-lib prefix: the library name with '-' -> '_' plus '_' (what `system://<lib>` looks up)."""
    return ctx.params["lib_stem"].replace("-", "_") + "_"


def step_verify(ctx: NodeContext) -> None:
    t = TARGETS[ctx.params["target"]]
    path = lib_file(ctx)
    if t.name == "cpu":
        return _verify_cpu(ctx, path)
    if t.name == "cuda":
        facts, failures = inspect_lib.check_cuda_so(path)
    elif t.link == "emcc-tvmjs":
        return _verify_webgpu(ctx, path)
    elif t.name.startswith("vulkan"):
        facts, failures = inspect_lib.check_vulkan_lib(path, t.object_arch)
    else:
        facts, failures = inspect_lib.check_tar(path, t.object_arch)
    weights = _weights_verification(ctx)
    failures = failures + [f"weights ({weights['node']}): {f}" for f in weights["failures"]]
    if weights["passed"] is not True and not weights["failures"]:
        failures.append(f"weights ({weights['node']}): numeric check did not pass")
    ctx.result["verification"] = {
        "passed": not failures, "checks": {**weights["checks"], "structural": facts},
        "thresholds": weights["thresholds"], "failures": failures, "verified_by": weights["node"],
        "not_run": (f"library structural check only, weights verified numerically by {weights['node']} "
                    f"({t.name} library needs its device)")}
    ctx.log(f"verify {t.name}: structural {'ok' if not failures else failures}; weights verified by {weights['node']}")


def _verify_webgpu(ctx: NodeContext, path: Path) -> None:
    """The .wasm run for real (webgpu_session: tvmjs in Node, npm `webgpu`/Dawn on Mesa lavapipe) on the cpu
    check's positions, against the reference with the same figures and thresholds; plus its structural check
    against tvmjs's glue and the weights' own numeric check (parent `verified_by`)."""
    from builders.backends.mlc.webgpu_session import WebgpuSession
    from builders.verify.metrics import load_reference, verdict

    _, c, q = _setup(ctx)
    record = ctx.load_json(ctx.inputs["compiled"] / COMPILED_JSON)
    facts, failures = inspect_lib.check_wasm(path, record.get("tvmjs_glue_imports"))
    weights = _weights_verification(ctx)
    with_text = budget.scores_text(ctx.params.get("thresholds"))
    ref = load_reference(ctx.inputs["reference"], text=with_text)
    t0 = time.monotonic()
    sess = WebgpuSession(path, ctx.inputs["weights"], ctx.log)
    try:
        lib_logits, text_lib, prefill_last = library_logits(sess, ref, with_text)
    finally:
        sess.close()
    t_run = time.monotonic() - t0
    info = sess.info
    figures, text = library_figures(ref, lib_logits, text_lib, prefill_last)
    ver = verdict(figures, ctx.params.get("thresholds"), where=f"mlc {q.code} on webgpu")
    t_ref = check_lib_vs_dequantized(ctx, c, q, ref, lib_logits, ver)
    if figures["decode_steps"] < DECODE_CHECK_STEPS:
        ver["failures"].append(f"only {figures['decode_steps']} decode steps compared (need >= {DECODE_CHECK_STEPS})")
    adapter = info["adapter"]
    how = (f"tvmjs in Node {info['node']} with npm webgpu (Dawn) on {adapter.get('description') or adapter.get('vendor')}"
           f" ({adapter.get('architecture') or 'no architecture reported'})")
    facts["webgpu_run"] = (f"ran: {how}; {info['weights']['tensors']} weight tensors "
                           f"({info['weights']['bytes']} bytes) on the device")
    ver["failures"] = failures + ver["failures"] + [f"weights ({weights['node']}): {f}" for f in weights["failures"]]
    if weights["passed"] is not True and not weights["failures"]:
        ver["failures"].append(f"weights ({weights['node']}): numeric check did not pass")
    ver["passed"] = not ver["failures"]
    ver["checks"]["structural"] = facts
    ver["note"] = f"weights also verified numerically by {weights['node']} (parent verified_by)"
    ver["ran_on"] = {"target": "webgpu", "how": how, "adapter": adapter, "tools": {
        k: v for k, v in _tools_json().items() if k in ("nodejs", "npm_webgpu", "esbuild", "mesa_vulkan_drivers")}}
    ver["budget"] = {"prompt_positions": figures["positions"], "text_positions": len(text),
                     "decode_steps": figures["decode_steps"], "library_seconds": round(t_run, 2),
                     "dequantized_reference_seconds": round(t_ref, 2)}
    ctx.result["verification"] = ver
    ctx.log(f"verify webgpu: ran on {how} in {t_run:.1f}s; "
            + ", ".join(f"{k}={v:.4g}" for k, v in figures.items() if isinstance(v, float)))


WEIGHTS_VERIFICATION = ".verification.json"  # next to the cpu library: its numeric figures, for other targets


def _weights_verification(ctx: NodeContext) -> dict:
    """The numeric check of this library's weights, from the cpu library node (parent `verified_by`)."""
    parent = ctx.inputs.get("verified_by")
    key = ((ctx.spec.get("parents") or {}).get("verified_by") or {}).get("key")
    if parent is None or key is None:
        raise NodeFailed("a non-cpu mlc library needs its weights' numeric check (parent 'verified_by': the cpu "
                         "library node); this plan has none")
    found = sorted(Path(parent).glob("*" + WEIGHTS_VERIFICATION))
    if len(found) != 1:
        raise NodeFailed(f"{key}: expected one *{WEIGHTS_VERIFICATION} in its output, found {len(found)}")
    record = ctx.load_json(found[0])
    return {"node": key, "passed": record.get("passed"), "checks": record.get("checks") or {},
            "thresholds": record.get("thresholds") or {}, "failures": record.get("failures") or []}


# The cpu library check's fixed budget of positions (independent of the model's size):
#   every reference prompt teacher-forced through `batch_prefill` (prompt + the reference's greedy
#   continuation; all prompts that fit a prefill chunk in one call, one KV sequence each - MLC's batched
#   prefill - so all their positions' logits come at once), except prompt 0, whose continuation goes
#   through `decode` one token at a time (DECODE_CHECK_STEPS: the entry point MLC's runtime generates with);
#   the first TEXT_POSITIONS tokens of the perplexity text through `batch_prefill`; prompt 0 once more
#   through the single-sequence `prefill`. The cpu check prefills at most CHECK_CHUNK positions a call (the
#   text: two calls, the second continuing the first's KV cache), which caps the library's largest logits
#   buffer (positions x vocabulary float32) and with it the node's peak memory.
# With the project's prompts that is ~120 prompt positions + 128 text positions: top-1 agreement and KL
# over >= 100 positions resolve the q4 thresholds (top1_min 0.9: one position is < 1 %).
TEXT_POSITIONS = 128
DECODE_CHECK_STEPS = 8
CHECK_CHUNK = 64


def library_logits(sess, ref: dict, text: bool) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray]:
    """(per-prompt logits, perplexity-text logits (None unless `text`: verify/budget.py scores_text),
    prompt 0's last-position logits via `prefill`)."""
    first_tokens, first_len, _ = ref["prompts"][0]
    rest = sess.forward_many([tokens for tokens, _, _ in ref["prompts"][1:]])
    text_lib = sess.forward(ref["text_tokens"][: min(TEXT_POSITIONS, sess.ctx)]) if text else None
    return [sess.forward(first_tokens, first_len), *rest], text_lib, sess.prefill_last(first_tokens[:first_len])


FIGURE_BLOCK = 16  # positions per block of the vocabulary-wide figures (metrics.compare/perplexity temporaries)


def library_figures(ref: dict, lib_logits: list[np.ndarray], text_lib: np.ndarray | None,
                    prefill_last: np.ndarray) -> tuple[dict, np.ndarray]:
    """The figures of library_logits' output (the prompts' logits, one array per prompt) against the
    reference (metrics.compare over every prompt position, perplexity on the text if it was run, decode
    steps, the `prefill` entry's last position), and the text tokens scored."""
    from builders.verify.metrics import compare, perplexity

    figures = compare([r for _, _, r in ref["prompts"]], list(lib_logits), block=FIGURE_BLOCK)
    text = ref["text_tokens"][: len(text_lib) if text_lib is not None else 0]
    if text_lib is not None:
        figures["ppl_ref"] = perplexity(ref["text_logits"][: len(text)], text, block=FIGURE_BLOCK)
        figures["ppl_art"] = perplexity(text_lib, text, block=FIGURE_BLOCK)
        figures["ppl_delta"] = figures["ppl_art"] - figures["ppl_ref"]
    first_tokens, first_len, _ = ref["prompts"][0]
    figures["decode_steps"] = int(len(first_tokens) - first_len)
    figures["prefill_entry_max_abs"] = float(np.abs(prefill_last - ref["prompts"][0][2][first_len - 1]).max())
    return figures, text


def check_lib_vs_dequantized(ctx: NodeContext, c: ModelConfig, q: MlcQuant, ref: dict, lib_logits, ver: dict) -> float:
    """Library correctness alone: the prompts' logits against the same dequantized weights run through
    transformers layer by layer, max|Δlogit| within LIB_VS_DEQUANT_MAX (or F16_ULPS of the largest logit);
    added to `ver`. The reference's logits come a block of vocabulary columns at a time and are compared
    and dropped (reference.streamed_head_blocks). Uses only ref's prompt tokens. Returns its seconds."""
    from builders.backends.mlc import reference

    hf_arch = _setup(ctx)[0]["architectures"][0]
    t0 = time.monotonic()
    lib_vs_dq = dq_max = 0.0
    seen = 0
    for rows, parts in reference.streamed_head_blocks(ctx.model_dir, ctx.inputs["weights"], c, q, hf_arch,
                                                      [tokens for tokens, _, _ in ref["prompts"]]):
        for lib, dq in zip(lib_logits, parts):
            lib_vs_dq = max(lib_vs_dq, float(np.abs(dq - lib[:, rows]).max(initial=0.0)))
            dq_max = max(dq_max, float(np.abs(dq).max(initial=0.0)))
        seen += rows.stop - rows.start
    t_ref = time.monotonic() - t0
    if seen != c.vocab_size:
        raise NodeFailed(f"dequantized reference covered {seen} of {c.vocab_size} vocabulary columns")
    bound = LIB_VS_DEQUANT_MAX
    if q.model_dtype == "float16":
        bound = max(bound, F16_ULPS * dq_max)
    ver["checks"]["lib_vs_dequantized_max_abs_logit"] = lib_vs_dq
    ver["thresholds"]["lib_vs_dequantized_max_abs_logit"] = round(bound, 6)
    if lib_vs_dq > bound:
        ver["failures"].append(f"library vs dequantized reference max|Δlogit|={lib_vs_dq:.4g} > {bound:.4g}")
        ver["passed"] = False
    return t_ref


def _tokens_of(ref: dict) -> dict:
    """The reference without its logits (what the library is fed): prompts as (tokens, prompt_len, None)."""
    return {"prompts": [(tokens, n, None) for tokens, n, _ in ref["prompts"]], "text_tokens": ref["text_tokens"]}


def _verify_cpu(ctx: NodeContext, path: Path) -> None:
    """The cpu library run on the check's positions, scored against the reference; then against the same
    dequantized weights through transformers. Memory: the reference's logits are not held while the library
    runs (only its tokens; the file is read again after the session is closed), and they are dropped once
    the figures are made, before the dequantized reference runs."""
    from builders import rss
    from builders.backends.mlc import cpu_features, cpu_schedule, harness
    from builders.verify.metrics import load_reference, verdict

    _, c, q = _setup(ctx)
    cpu_features.check(TARGETS["cpu"].requires_cpu, path.name)
    with_text = budget.scores_text(ctx.params.get("thresholds"))
    tokens = _tokens_of(load_reference(ctx.inputs["reference"], text=False))
    t0 = time.monotonic()
    sess = harness.Session(path, ctx.inputs["weights"], chunk=CHECK_CHUNK)
    lib_logits, text_lib, prefill_last = library_logits(sess, tokens, with_text)
    rss_lib = rss.current_mb()
    sess.close()  # the library's weights and TVM's memory pool go before the reference below
    t_lib = time.monotonic() - t0
    figures, text = library_figures(load_reference(ctx.inputs["reference"], text=with_text), lib_logits, text_lib,
                                    prefill_last)
    del text_lib
    ver = verdict(figures, ctx.params.get("thresholds"), where=f"mlc {q.code}")
    # (b) library correctness alone: the same dequantized weights through transformers, layer by layer
    t_ref = check_lib_vs_dequantized(ctx, c, q, tokens, lib_logits, ver)
    if figures["decode_steps"] < DECODE_CHECK_STEPS:
        ver["failures"].append(f"only {figures['decode_steps']} decode steps compared (need >= {DECODE_CHECK_STEPS})")
        ver["passed"] = False
    ver["budget"] = {"prompt_positions": figures["positions"], "text_positions": len(text),
                     "decode_steps": figures["decode_steps"], "threads": cpu_schedule.threads(),
                     "library_seconds": round(t_lib, 2), "dequantized_reference_seconds": round(t_ref, 2)}
    ctx.result["verification"] = ver
    numeric = {k: v for k, v in ver["checks"].items() if isinstance(v, (int, float))}
    record = {"node": ctx.spec["key"], "passed": ver["passed"], "checks": numeric, "thresholds": ver["thresholds"],
              "failures": ver["failures"]}
    (ctx.out / (ctx.params["lib_stem"] + WEIGHTS_VERIFICATION)).write_text(
        json.dumps(record, indent=1, sort_keys=True) + "\n")
    ctx.log(f"verify cpu: library {t_lib:.1f}s ({rss_lib} MiB resident after it), dequantized reference {t_ref:.1f}s "
            f"({rss.current_mb()} MiB resident after it, peak {rss.peak_mb()} MiB); "
            + ", ".join(f"{k}={v:.4g}" for k, v in ver["checks"].items() if isinstance(v, float)))


STEPS = {
    "mlc-weights": [("convert_weight", step_convert_weight), ("gen_config", step_gen_config),
                    ("verify_quant", step_verify_quant), ("verify_tokenizer", step_verify_tokenizer)],
    "mlc-compile": [("compile", step_compile)],
    "mlc-lib": [("library", step_library), ("verify", step_verify)],
}


def steps_of(kind: str):
    if kind not in STEPS:
        raise NodeFailed(f"mlc backend has no node kind '{kind}' (kinds: {', '.join(STEPS)})")
    return STEPS[kind]
