"""MLC backend on Apache TVM: MLC-format weights + mlc-chat-config.json, and one model library per
target, verified by running the cpu library with TVM's runtime.

Nodes (see README "mlc"):
  mlc-weights  <model>.mlc.<quant>.weights        convert_weight -> gen_config -> verify_quant
  mlc-compile  mlc.<arch>-<config sha10>.<quant>[-ctx<N>].compile.<target>   compile
               reads no model: its inputs are the architecture, the model config, the quant and the
               target, so every model with those equal (a fine-tune, a weights-only variant) shares
               one compiled library ("reuse-lib")
  mlc-lib      <model>.mlc.<quant>.lib.<target>   library (the compiled library under the model's
               MLC name; the manifest says whether it was compiled for another model) -> verify
               A non-cpu library is checked structurally only; its node has the cpu library node of
               the same weights as parent `verified_by` and fails when that numeric check fails.
Plan side only reads tables here (quant.py, targets.py, models/__init__.py); tvm, torch and the
transformers reference are imported inside the steps (steps.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any, Mapping

from builders.archs import supported
from builders.backends.base import REFERENCE, Cell, ModelRef, NodeDef
from builders.backends.mlc.conv_templates import CONV_TEMPLATES
from builders.backends.mlc.models import ARCHS, ModelConfig
from builders.backends.mlc.quant import QUANTS, REFUSED_LEGACY, describe
from builders.backends.mlc import tvm_source
from builders.backends.mlc.targets import TARGETS
from builders.options import Option, OptionSet

MAX_CONTEXT = 131072  # tokens: the largest context of the supported families (Llama 3.x); the KV cache is sized by it
OPTIONS = OptionSet("mlc", [
    Option("context_window_size", int, 512, "tokens the KV cache holds (MLC's context_window_size)",
           what=f"a positive integer at most {MAX_CONTEXT}", check=lambda v: 0 < v <= MAX_CONTEXT,
           aliases=("max_seq_len", "max-seq-len")),
    Option("prefill_chunk_size", int, 128, "tokens per prefill call (at most context_window_size)",
           what=f"a positive integer at most {MAX_CONTEXT}", check=lambda v: 0 < v <= MAX_CONTEXT),
    Option("conv_template", str, None, "conversation template written to mlc-chat-config.json (default: the "
           "architecture's)", allowed=tuple(CONV_TEMPLATES)),
])
NUMERIC_TARGET = "cpu"  # the target whose library runs here: the weights' numeric check


def lib_file_name(stem: str, target: str) -> str:
    """The library file a library node writes (steps.lib_file): objects are tarred where linking is deferred."""
    t = TARGETS.get(target)
    suffix = t.suffix if t else "tar"
    linked_here = suffix not in ("dylib", "wasm") or (t is not None and t.link is not None)
    return f"{stem}.{suffix if linked_here else 'tar'}"


class MlcBackend:
    name = "mlc"
    image = "mlc"
    quants = {code: describe(code) for code in QUANTS}
    targets = ("cpu", "cuda", "vulkan", "vulkan-windows", "android", "iphone", "metal", "metal_x86_64", "webgpu")
    archs = supported("mlc")  # each has a model definition in ARCHS (mlc/models/)
    options = OPTIONS
    code = ("backends/mlc", "verify/tokenizer_check.py")

    def normalize_options(self, options: Mapping[str, Any], where: str) -> dict[str, Any]:
        out = OPTIONS.normalize(options, where)
        if out["prefill_chunk_size"] > out["context_window_size"]:
            out["prefill_chunk_size"] = out["context_window_size"]
        return out

    def unsupported(self, cell: Cell, model: ModelRef) -> str | None:
        return None

    def unavailable(self, cell: Cell) -> str | None:
        if cell.quant in REFUSED_LEGACY:
            return (f"{cell.quant} is a legacy MLC code with no equivalent in MLC's current flow: "
                    f"use {REFUSED_LEGACY[cell.quant]}")
        if cell.quant not in QUANTS:
            return f"unknown mlc quant '{cell.quant}': use one of {', '.join(QUANTS)}"
        return None

    def built_on_ci(self, cell: Cell, images: Mapping[str, Any]) -> str | None:
        """Why this cell is built on CI runners instead of here (the planner lists it `ci-runner`), or None."""
        t = TARGETS.get(cell.target)
        return tvm_source.ci_runner_reason(dict(images)) if t is not None and t.ci_runner else None

    def expand(self, cell: Cell, model: ModelRef) -> list[NodeDef]:
        opts = dict(cell.options)
        config = ModelConfig.from_hf(dict(model.config), opts) if model.config else None
        wkey = f"{model.name}.mlc.{cell.quant}.weights"
        reference = {"reference": REFERENCE}
        weights = NodeDef(
            key=wkey, kind="mlc-weights", backend="mlc", image="mlc",
            params={"quant": cell.quant, "model_name": model.name, "options": opts},
            parents=dict(reference), publish=f"mlc/{model.name}-{cell.quant}-MLC", verify_quant=cell.quant,
            unavailable=config.unsupported() if config else None,
            outputs=("tensor-cache.json", "params_shard_*.bin", "mlc-chat-config.json"))
        ctx = opts["context_window_size"]
        default_ctx = (model.config or {}).get("max_position_embeddings")
        ctx_suffix = "" if ctx == default_ctx else f"-ctx{ctx}"
        lib_opts = {k: opts[k] for k in ("context_window_size", "prefill_chunk_size")}

        def library(target: str, extra_parents: dict) -> list[NodeDef]:
            compiled = self._compile_node(replace(cell, target=target), model, config, lib_opts, ctx_suffix,
                                          weights.unavailable)
            lib_stem = f"{model.name}-{cell.quant}{ctx_suffix}-{target}"
            lib = NodeDef(
                key=f"{model.name}.mlc.{cell.quant}.lib.{target}", kind="mlc-lib", backend="mlc",
                image=TARGETS[target].lib_image,
                params={"quant": cell.quant, "target": target, "model_name": model.name,
                        "lib_stem": lib_stem, "options": lib_opts},
                parents={"weights": weights, "compiled": compiled, **reference, **extra_parents},
                publish="mlc/libs", unavailable=weights.unavailable, verify_quant=cell.quant,
                outputs=(lib_file_name(lib_stem, target),))
            return [compiled, lib]

        if cell.target == NUMERIC_TARGET:
            return [weights, *library(cell.target, {})]
        # a library that cannot run here is only as verified as its weights: it depends on the cpu
        # library node, where the same weights are run numerically, and carries its figures
        numeric = library(NUMERIC_TARGET, {})
        return [weights, *numeric, *library(cell.target, {"verified_by": numeric[-1]})]

    @staticmethod
    def _compile_node(cell: Cell, model: ModelRef, config: ModelConfig | None, lib_opts: dict, ctx_suffix: str,
                      unavailable: str | None) -> NodeDef:
        """The library compile, keyed by what a library depends on - never by the weights."""
        arch = model.arch
        lib_config = config.to_dict() if config else {}
        sha = hashlib.sha256(json.dumps([arch, lib_config], sort_keys=True).encode()).hexdigest()[:10]
        family = ARCHS[arch].model_type  # the planner refused unsupported architectures before expand()
        stem = f"{family}-{sha}-{cell.quant}{ctx_suffix}-{cell.target}"
        return NodeDef(
            key=f"mlc.{family}-{sha}.{cell.quant}{ctx_suffix}.compile.{cell.target}", kind="mlc-compile",
            backend="mlc", image=TARGETS[cell.target].image, uses_model=False, publish=None,
            unavailable=unavailable,
            # no verify_quant: verification thresholds are no input of a compile
            params={"quant": cell.quant, "target": cell.target, "architecture": arch, "model_config": lib_config,
                    "config_sha": sha, "lib_stem": stem, "options": lib_opts},
            outputs=(lib_file_name(stem, cell.target), "library.json"))

    def steps(self, kind: str):
        from builders.backends.mlc import steps

        return steps.steps_of(kind)


BACKEND = MlcBackend()
