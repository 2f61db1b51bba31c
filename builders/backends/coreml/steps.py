"""The run side: the eight steps of a coreml node (numbered like ANEMLL's convert_model.sh, so
`--only 3` is the FFN step). Intermediate packages (FFN and prefill before combining, fp16 programs
before palettization) live in ctx.work; final ones in ctx.out."""

from __future__ import annotations

import platform
import shutil
from pathlib import Path

from builders.backends.base import NodeContext
from builders.backends.coreml import convert
from builders.backends.coreml.heap import return_free_heap
from builders.backends.coreml.layout import Layout, layout_of
from builders.errors import NodeFailed

MACOS = platform.system() == "Darwin"
DEFER_REASON = ("compiling .mlpackage to .mlmodelc needs Core ML (macOS); run step 6 natively on a Mac "
                "(GitHub Actions macOS runner)")


def _layout(ctx: NodeContext) -> Layout:
    return layout_of(ctx.params, ctx.model_dir)


def _source(ctx: NodeContext, layout: Layout) -> convert.Source:
    return convert.Source(ctx.model_dir, layout.context)


def _parts_dir(ctx: NodeContext) -> Path:
    d = ctx.work / "parts"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _tool_versions() -> dict:
    import coremltools
    import numpy
    import torch

    return {"coremltools": coremltools.__version__, "torch": torch.__version__, "numpy": numpy.__version__}


def _reference_tokens(ctx: NodeContext) -> list:
    from builders.verify.metrics import load_reference

    ref = load_reference(ctx.inputs["reference"])
    return [t for t, _, _ in ref["prompts"]] + [ref["text_tokens"]]


def step_embeddings(ctx: NodeContext) -> None:
    """Step 1: preflight (arch, chunk estimate, fp16 range sweep), then the embeddings part."""
    from builders.backends.coreml import ARCHS
    from builders.backends.coreml.preflight import preflight

    layout = _layout(ctx)
    ctx.result["preflight"] = preflight(layout, ctx.model_dir, _reference_tokens(ctx), ARCHS)
    return_free_heap()  # the sweep's fp32-compute model is gone: its heap is not the conversion's
    ctx.log(f"preflight: fp16 sweep max |activation| {ctx.result['preflight']['fp16_sweep']['max_abs']}, "
            f"{layout.chunks} chunk(s), ~{ctx.result['preflight']['chunk_mb_estimate']} MiB per chunk")
    ctx.result["tool_versions"] = _tool_versions()
    ctx.result["runtime_abi"] = {"deployment_target": convert.DEPLOYMENT_TARGET, "format": "mlprogram",
                                 "compute_precision": "fp16"}
    src = _source(ctx, layout)
    convert.save_part(convert.embeddings(src, layout.batch, layout.lut("lut1")), ctx.out / layout.names["embeddings"],
                      layout.lut("lut1"), ctx.work, op_types=("gather",))


def step_lm_head(ctx: NodeContext) -> None:
    layout = _layout(ctx)
    src = _source(ctx, layout)
    sizes = ", ".join(map(str, sorted(set(layout.split_sizes), reverse=True)))
    ctx.log(f"lm_head: {layout.splits} part(s) of {sizes} rows")
    convert.save_part(convert.lm_head(src, layout.split_sizes, layout.argmax, layout.lut("lut3")),
                      ctx.out / layout.names["lm_head"], layout.lut("lut3"), ctx.work)


def _chunks(ctx: NodeContext, kind: str, seq: int) -> None:
    layout = _layout(ctx)
    src = _source(ctx, layout)
    for i, (layers, name) in enumerate(zip(layout.layers, layout.names[kind])):
        ctx.log(f"{kind} chunk {i + 1}/{layout.chunks}: layers {layers.start}..{layers.stop - 1}")
        ml = convert.chunk(src, layers, i == layout.chunks - 1, seq)
        convert.save_part(ml, _parts_dir(ctx) / name, layout.lut("lut2"), ctx.work)
        del ml
        return_free_heap()


def step_ffn(ctx: NodeContext) -> None:
    _chunks(ctx, "ffn", 1)


def step_prefill(ctx: NodeContext) -> None:
    _chunks(ctx, "prefill", _layout(ctx).batch)


def step_combine(ctx: NodeContext) -> None:
    layout = _layout(ctx)
    for ffn, pf, out in zip(layout.names["ffn"], layout.names["prefill"], layout.names["ffn_pf"]):
        missing = [n for n in (ffn, pf) if not (_parts_dir(ctx) / n).is_dir()]
        if missing:
            raise NodeFailed(f"combine: {', '.join(missing)} missing in the work dir; run steps 3 (ffn) and 4 (prefill)")
        convert.combine(_parts_dir(ctx) / ffn, _parts_dir(ctx) / pf, ctx.out / out)


def _packages(ctx: NodeContext, layout: Layout) -> list[Path]:
    n = layout.names
    paths = [ctx.out / n["embeddings"], ctx.out / n["lm_head"], *(ctx.out / x for x in n["ffn_pf"])]
    missing = [p.name for p in paths if not (p / "Manifest.json").is_file()]
    if missing:
        raise NodeFailed(f"missing package(s) {', '.join(missing)}; run steps 1-5 first")
    return paths


def step_compile(ctx: NodeContext) -> None:
    """Step 6: .mlmodelc per package, macOS only; on Linux recorded as deferred (never as success)."""
    layout = _layout(ctx)
    packages = _packages(ctx, layout)
    deferred = [d for d in ctx.result.get("deferred", []) if d.get("step") != "compile"]
    if not MACOS:
        deferred.append({"step": "compile", "reason": DEFER_REASON,
                         "outputs": [p.name.replace(".mlpackage", ".mlmodelc") for p in packages]})
        ctx.result["deferred"] = deferred
        ctx.log("compile: deferred to macOS")
        return
    import coremltools as ct

    for pkg in packages:
        dest = ctx.out / pkg.name.replace(".mlpackage", ".mlmodelc")
        if dest.exists():
            shutil.rmtree(dest)
        ct.utils.compile_model(str(pkg), destination_path=str(dest))
        if not dest.is_dir():
            raise NodeFailed(f"compile: {dest.name} was not written")
    ctx.result["deferred"] = deferred
    ctx.result["compiled"] = sorted(p.name.replace(".mlpackage", ".mlmodelc") for p in packages)


def step_meta(ctx: NodeContext) -> None:
    from builders import VERSION
    from builders.backends.coreml import meta

    layout = _layout(ctx)
    _packages(ctx, layout)
    ctx.result["tokenizer_files"] = meta.write(ctx.out, ctx.model_dir, layout, ctx.params["model_name"], VERSION)


def step_test(ctx: NodeContext) -> None:
    """Step 8: on Linux the checks of checks.py; on macOS the Core ML smoke test as well (macos.py)."""
    import time

    from builders.backends.coreml import checks
    from builders.verify import budget
    from builders.verify.metrics import load_reference, verdict

    layout = _layout(ctx)
    packages = _packages(ctx, layout)
    return_free_heap()
    failures: list[str] = []
    t0 = time.monotonic()
    specs = {}
    for name, want in checks.expected(layout).items():
        specs[name], fails = checks.spec_check(ctx.out / name, want)
        failures += fails
    lut = {}
    sources = {layout.names["embeddings"]: (layout.names["embeddings"], None),
               layout.names["lm_head"]: (layout.names["lm_head"], None),
               **{pf: (ffn, "infer") for pf, ffn in zip(layout.names["ffn_pf"], layout.names["ffn"])}}
    for final, (fp16_name, fn) in sources.items():
        fp16 = convert.fp16_path(ctx.work, fp16_name)
        if specs[final].get("lut") and fp16.is_dir():
            lut[final] = checks.lut_errors(ctx.out / final, fp16, fn)
        elif specs[final].get("lut"):
            failures.append(f"{final}: fp16 program {fp16.name} missing in the work dir; rerun its step")
    ctx.log(f"spec checks and LUT errors: {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    with_text = budget.scores_text(ctx.params.get("thresholds"))  # the perplexity text only for a ppl threshold
    figures = checks.numerical(checks.load_parts(ctx.out, layout), load_reference(ctx.inputs["reference"], text=with_text),
                               layout)
    ctx.log(f"numerical check of the saved programs: {time.monotonic() - t0:.1f}s")
    sizes = {name: round(checks.weight_mb(ctx.out / name), 4) for name in layout.names["ffn_pf"]}
    limit = ctx.params["options"]["max_chunk_mb"]
    if ctx.params["options"]["chunk"] == "auto" and max(sizes.values()) > limit:
        failures.append(f"chunk auto: largest chunk weights {max(sizes.values()):.2f} MiB exceed max_chunk_mb={limit}")
    figures["lut_rel_l2_max"] = max((e["rel_l2"] for per in lut.values() for e in per.values() if "rel_l2" in e),
                                    default=0.0)
    ver = verdict(figures, ctx.params.get("thresholds"))
    ver["failures"] = failures + ver["failures"]
    ver["passed"] = not ver["failures"]
    ver["checks"]["spec"] = specs
    ver["checks"]["lut_reconstruction"] = lut
    ver["checks"]["chunk_weights_mb"] = {"actual": sizes, "estimate_largest": opt_chunk_mb(layout)}
    ver["checks"]["content_hash"] = {p.name: checks.tree_hash(p) for p in packages}
    ver["checks"]["evaluator"] = ("numpy interpreter of the saved ML programs (builders/backends/coreml/milrun.py): "
                                  "fp32 math, every op rounded to its declared dtype")
    if MACOS:
        from builders.backends.coreml import macos

        ver["checks"]["coreml_smoke"] = macos.smoke(ctx.out, layout, load_reference(ctx.inputs["reference"]))
    from builders.backends.coreml.meta import tokenizer_result
    from builders.verify import tokenizer_check

    ver = tokenizer_check.merge(ver, tokenizer_result(ctx.out, ctx.inputs["reference"]))
    ctx.result["verification"] = ver
    ctx.log("test: " + ", ".join(f"{k}={v:.4g}" for k, v in figures.items() if isinstance(v, float)))


def opt_chunk_mb(layout: Layout) -> float:
    from builders.backends.coreml import options as opt

    return round(opt.chunk_mb(layout.config, layout.lut("lut2"), layout.chunks, layout.context), 4)


STEPS = [("embeddings", step_embeddings), ("lm_head", step_lm_head), ("ffn", step_ffn), ("prefill", step_prefill),
         ("combine", step_combine), ("compile", step_compile), ("meta", step_meta), ("test", step_test)]
