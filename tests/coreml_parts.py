"""Shared by the Core ML program tests: a 2-layer HF model converted into single-chunk fp16 parts
(embeddings, LM head, decode and prefill FFN chunks, combined into one multifunction package) and run
teacher-forced through the Linux checker against the model itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def fp16_parts_vs_model(model, model_dir: Path, out: Path, model_name: str, context: int, batch: int) -> dict:
    """metrics.compare figures of the converted parts against `model` (saved at model_dir) over 15 tokens
    (6 prefill positions, then 9 decode steps)."""
    import torch

    from builders.backends.coreml import checks, convert, options, runtime
    from builders.backends.coreml.layout import layout_of
    from builders.verify.metrics import compare

    params = {"model_name": model_name, "luts": options.luts_for("fp16", {}), "chunks": 1,
              "options": options.normalize({"context": context, "batch": batch}, "test")}
    layout = layout_of(params, model_dir)
    src = convert.Source(model_dir, context)
    n = layout.names
    out.mkdir()
    convert.save(convert.embeddings(src, batch), out / n["embeddings"])
    convert.save(convert.lm_head(src, 1, False), out / n["lm_head"])
    convert.save(convert.chunk(src, range(2), True, 1), out / n["ffn"][0])
    convert.save(convert.chunk(src, range(2), True, batch), out / n["prefill"][0])
    convert.combine(out / n["ffn"][0], out / n["prefill"][0], out / n["ffn_pf"][0])
    tokens = [int(t) for t in np.random.RandomState(1).randint(3, 96, size=15)]
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([tokens])).logits[0].numpy()
    pre, dec = runtime.teacher_forced(checks.load_parts(out, layout), tokens, 9)
    return compare(ref, np.concatenate([pre, dec]))
