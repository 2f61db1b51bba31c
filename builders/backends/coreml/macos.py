"""Step 8 on macOS: the chat smoke test through Core ML itself (the compiled .mlmodelc of step 6), with
the same host driver (runtime.py) the Linux check uses on the numpy interpreter. Needs macOS: on
Linux coremltools cannot load or predict, so this module is only exercised on a macOS runner
(GitHub Actions `macos` job: `invoke build --executor native --only <cell>`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from builders.backends.coreml import runtime
from builders.backends.coreml.layout import Layout

SMOKE_STEPS = 8


class CoreMLFunction:
    """One function of a compiled model, called like a milrun.Function."""

    def __init__(self, path: Path, function: str | None = None):
        import coremltools as ct

        self.model = ct.models.CompiledMLModel(str(path), compute_units=ct.ComputeUnit.CPU_AND_NE,
                                               function_name=function)

    def __call__(self, inputs: dict, state=None) -> dict:
        return self.model.predict(inputs, state=state) if state is not None else self.model.predict(inputs)

    def new_state(self):
        return self.model.make_state()


def _compiled(out: Path, name: str) -> Path:
    return out / name.replace(".mlpackage", ".mlmodelc")


def load_parts(out: Path, layout: Layout) -> runtime.Parts:
    n = layout.names
    return runtime.Parts(
        embeddings=CoreMLFunction(_compiled(out, n["embeddings"])),
        infer=[CoreMLFunction(_compiled(out, x), "infer") for x in n["ffn_pf"]],
        prefill=[CoreMLFunction(_compiled(out, x), "prefill") for x in n["ffn_pf"]],
        lm_head=CoreMLFunction(_compiled(out, n["lm_head"])), context=layout.context, batch=layout.batch,
        argmax=layout.argmax)


def smoke(out: Path, layout: Layout, reference: dict) -> dict:
    """Greedy generation from the first reference prompt through Core ML (compute units CPU+NE), compared
    with the transformers continuation; teacher-forced top-1 over all reference prompts."""
    from builders.verify.reference import Tokenizer

    parts = load_parts(out, layout)
    tokens, prompt_len, _ = reference["prompts"][0]
    generated = runtime.generate(parts, tokens[:prompt_len], SMOKE_STEPS, layout.split_sizes)
    expected = [int(t) for t in tokens[prompt_len:prompt_len + SMOKE_STEPS]]
    tok = Tokenizer(out)
    hits = total = 0
    if not layout.argmax:
        for toks, plen, logits in reference["prompts"]:
            pre, dec = runtime.teacher_forced(parts, toks, plen)
            hits += int((np.concatenate([pre, dec]).argmax(-1) == logits.argmax(-1)).sum())
            total += len(logits)
    return {"compute_units": "CPU_AND_NE", "prompt": tok.decode([int(t) for t in tokens[:prompt_len]]),
            "generated": tok.decode(generated), "generated_ids": generated,
            "matches_reference_tokens": generated == expected,
            "top1_teacher_forced": hits / total if total else None}
