"""Step 7: tokenizer files and meta.yaml (ANEMLL's format: what the runtime needs to load the parts),
plus a `tokenizer` section (bos/eos ids, whether a prompt starts with BOS) read from the shipped files'
own behaviour; step 8 checks files + section against the original tokenizer (`tokenizer_result`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from builders.backends.coreml.layout import TOKENIZER_FILES, Layout


def _lut_value(code: str | None):
    return "none" if code is None else code


def _encoder(out: Path):
    """(encode(text, add_special) -> ids, token text -> id) of the shipped tokenizer files."""
    if (out / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
        return (lambda text, special: tok.encode(text, add_special_tokens=special).ids), tok.token_to_id
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    add = json.loads((out / "tokenizer_config.json").read_text()).get("add_bos_token", True) \
        if (out / "tokenizer_config.json").is_file() else True
    return (lambda text, special: ([sp.bos_id()] if special and add else []) + list(sp.encode(text))), sp.piece_to_id


def _token_text(value):
    return value.get("content") if isinstance(value, dict) else value


def tokenizer_section(out: Path) -> dict:
    """bos/eos ids and add_bos of the tokenizer files in out (tokenizer_config.json names the tokens,
    generation_config.json may add stop ids); add_bos is what the files do to a probe text."""
    out = Path(out)
    cfg = json.loads((out / "tokenizer_config.json").read_text()) if (out / "tokenizer_config.json").is_file() else {}
    gen = json.loads((out / "generation_config.json").read_text()) if (out / "generation_config.json").is_file() else {}
    encode, to_id = _encoder(out)
    bos_text, eos_text = _token_text(cfg.get("bos_token")), _token_text(cfg.get("eos_token"))
    bos = to_id(bos_text) if bos_text else None
    eos = to_id(eos_text) if eos_text else None
    stop = [eos] if eos is not None else []
    for extra in (gen.get("eos_token_id") if isinstance(gen.get("eos_token_id"), list) else [gen.get("eos_token_id")]):
        if extra is not None and int(extra) not in stop:
            stop.append(int(extra))
    probe = encode("a", True)
    return {"bos_token_id": bos, "eos_token_id": eos, "stop_token_ids": stop,
            "add_bos_token": bos is not None and probe[:1] == [bos]}


def tokenizer_result(out: Path, reference_dir: Path) -> dict:
    """The check of builders/verify/tokenizer_check.py on what the Core ML directory ships: the tokenizer
    files without special tokens, BOS prepended when meta.yaml's tokenizer section says so."""
    import yaml

    from builders.verify import tokenizer_check

    section = yaml.safe_load((Path(out) / "meta.yaml").read_text()).get("tokenizer")
    if not section:
        return {"passed": False, "how": "meta.yaml", "texts": 0, "mismatches": [],
                "failures": ["tokenizer: meta.yaml has no tokenizer section; rerun step 7 (meta)"]}
    encode, _ = _encoder(Path(out))
    prefix = [section["bos_token_id"]] if section["add_bos_token"] else []
    files = [f for f in TOKENIZER_FILES if (Path(out) / f).is_file()]
    return tokenizer_check.check(reference_dir, lambda text: prefix + encode(text, False), section["bos_token_id"],
                                 section["stop_token_ids"], "meta.yaml tokenizer + " + ", ".join(files))


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
    data = meta(layout, name, version)
    data["tokenizer"] = tokenizer_section(out)
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    (out / "meta.yaml").write_text(text)
    return copied
