"""Core ML backend for the Apple Neural Engine, ANEMLL-style: embeddings, LM head, FFN chunks with a KV
cache state, prefill chunks, FFN+prefill combined per chunk (multifunction), LUT palettization per
part, meta.yaml. `.mlmodelc` compilation and the Core ML smoke test need macOS; on Linux they are
deferred and the saved ML programs are checked with a numpy interpreter (milrun.py) instead.

Node: `<model>.coreml.<quant>.ane` (kind `coreml`), steps (numbered as ANEMLL's convert_model.sh):
  1 embeddings (preflight first)  2 lm_head  3 ffn  4 prefill  5 combine  6 compile  7 meta  8 test
Plan side reads tables only (options.py); torch and coremltools are imported inside the steps.
"""

from __future__ import annotations

from typing import Any, Mapping

from builders.archs import supported
from builders.backends.base import REFERENCE, Cell, ModelRef, NodeDef
from builders.backends.coreml import options as opt
from builders.errors import NodeFailed
from builders.options import OptionSet

ARCHS = supported("coreml")


class CoremlBackend:
    name = "coreml"
    image = "coreml"
    quants = {code: {"lut1": p.lut1, "lut2": p.lut2, "lut3": p.lut3, "about": p.about}
              for code, p in opt.QUANTS.items()}
    targets = ("ane",)
    archs = ARCHS
    options = OptionSet("coreml", [*opt.OPTIONS.options.values(), *opt.LUT_OPTIONS.options.values()])
    code = ("backends/coreml", "verify/metrics.py", "verify/tokenizer_check.py", "verify/fp32_compute.py")

    def normalize_options(self, options: Mapping[str, Any], where: str) -> dict[str, Any]:
        return opt.normalize(options, where)

    def unsupported(self, cell: Cell, model: ModelRef) -> str | None:
        return None

    def unavailable(self, cell: Cell) -> str | None:
        if cell.quant not in opt.QUANTS:
            return f"unknown coreml quant '{cell.quant}': use one of {', '.join(opt.QUANTS)}"
        return None

    def expand(self, cell: Cell, model: ModelRef) -> list[NodeDef]:
        options = dict(cell.options)
        luts = opt.luts_for(cell.quant, options)
        where = cell.options_where or f"matrix.yaml: backends.coreml.options / cells (for {cell.id})"
        config = dict(model.config or {})
        chunks = opt.resolve_chunks(config, options, luts["lut2"], where) if config else options["chunk"]
        if config:  # LUTs that cannot palettize every weight fail here, not after the conversion
            opt.check_ffn_lut(config, luts["lut2"], where)
            opt.lm_head_split_sizes(config["vocab_size"], opt.lut_of(luts["lut3"]), f"{where}: coreml lut3")
        reason = None
        if config and model.decoder.window_below(options["context"]):
            window = model.decoder.sliding_window
            reason = (f"{model.name}: sliding_window={window} is shorter than context={options['context']}; "
                      f"the Core ML parts attend to the whole context: set context <= {window}")
        params = {"quant": cell.quant, "target": cell.target, "model_name": model.name, "luts": luts,
                  "chunks": chunks, "options": options}
        return [NodeDef(key=f"{model.name}.coreml.{cell.quant}.{cell.target}", kind="coreml", backend="coreml",
                        image="coreml", params=params, parents={"reference": REFERENCE}, verify_quant=cell.quant,
                        publish="coreml", unavailable=reason, outputs=self._outputs(config, options, luts, chunks))]

    @staticmethod
    def _outputs(config: dict, options: dict, luts: dict, chunks) -> tuple[str, ...]:
        """Every part's package (its Manifest.json) and meta.yaml, named as layout.layout_of names them."""
        if not config or not isinstance(chunks, int):
            return ("*.mlpackage/Manifest.json", "meta.yaml")
        n = opt.file_names(options.get("prefix") or config.get("model_type", "model"), luts, chunks)
        return tuple(f"{p}/Manifest.json" for p in (n["embeddings"], n["lm_head"], *n["ffn_pf"])) + ("meta.yaml",)

    def steps(self, kind: str):
        if kind != "coreml":
            raise NodeFailed(f"coreml backend has no node kind '{kind}'")
        from builders.backends.coreml import steps

        return list(steps.STEPS)


BACKEND = CoremlBackend()
