"""Step 7: tokenizer files and meta.yaml (ANEMLL's format: what the runtime needs to load the parts)."""

from __future__ import annotations

import shutil
from pathlib import Path

from builders.backends.coreml.layout import TOKENIZER_FILES, Layout


def _lut_value(code: str | None):
    return "none" if code is None else code


def meta(layout: Layout, name: str, version: str) -> dict:
    n = layout.names
    compiled = {k: (v.replace(".mlpackage", ".mlmodelc") if isinstance(v, str) else
                    [x.replace(".mlpackage", ".mlmodelc") for x in v]) for k, v in n.items()}
    return {"model_info": {
        "name": name,
        "version": version,
        "description": f"{name} for the Apple Neural Engine: embeddings, {layout.chunks} FFN/prefill chunk(s), LM head",
        "framework": "Core ML",
        "parameters": {
            "context_length": layout.context,
            "batch_size": layout.batch,
            "lut_embeddings": _lut_value(layout.luts["lut1"]),
            "lut_ffn": _lut_value(layout.luts["lut2"]),
            "lut_lmhead": _lut_value(layout.luts["lut3"]),
            "num_chunks": layout.chunks,
            "model_prefix": layout.prefix,
            "lm_head_splits": layout.splits,
            "lm_head_split_sizes": list(layout.split_sizes),  # rows per output (not all equal): argmax_idx offsets
            "argmax_in_model": layout.argmax,
            "embeddings": compiled["embeddings"],
            "lm_head": compiled["lm_head"],
            "ffn": compiled["ffn_pf"][0],
            "ffn_chunks": compiled["ffn_pf"],
            "functions": {"decode": "infer", "prefill": "prefill"},
            "state": "kv_cache",
            "packages": {"embeddings": n["embeddings"], "lm_head": n["lm_head"], "ffn_chunks": n["ffn_pf"]},
        },
    }}


def write(out: Path, model_dir: Path, layout: Layout, name: str, version: str) -> list[str]:
    import yaml

    copied = []
    for f in TOKENIZER_FILES:
        if (Path(model_dir) / f).is_file():
            shutil.copyfile(Path(model_dir) / f, out / f)
            copied.append(f)
    text = yaml.safe_dump(meta(layout, name, version), sort_keys=False, default_flow_style=False)
    (out / "meta.yaml").write_text(text)
    return copied
