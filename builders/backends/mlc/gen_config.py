"""Weights node, step `gen_config`: mlc-chat-config.json (MLC's published fields) + tokenizer files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from builders.backends.mlc.conv_templates import template
from builders.backends.mlc.models import ARCHS, ModelConfig
from builders.backends.mlc.quant import MlcQuant
from builders.errors import NodeFailed

CHAT_CONFIG_VERSION = "0.1.0"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json",
                   "tokenizer_config.json")
SAMPLING_DEFAULTS = {"temperature": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                     "repetition_penalty": 1.0, "top_p": 1.0}


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def tokenizer_info(model_dir: Path) -> dict:
    """How MLC's tokenizer post-processes tokens: byte_fallback (SentencePiece-style) or byte_level (GPT-2 BPE)."""
    tok = _load(model_dir / "tokenizer.json")
    decoder = json.dumps(tok.get("decoder") or {})
    method = "byte_fallback" if ("ByteFallback" in decoder or (model_dir / "tokenizer.model").is_file()
                                 and "ByteLevel" not in decoder) else "byte_level"
    return {"token_postproc_method": method, "prepend_space_in_encode": False, "strip_space_in_decode": False}


def tokenizer_adds_bos(model_dir: Path, bos: int | None) -> bool:
    """Whether the model's own tokenizer starts an encoded text with BOS - read from its behaviour, not
    from the architecture or a config's bos_token_id (Qwen2 sets one but never adds it): tokenizer.json
    is run on a probe text with add_special_tokens=True; a SentencePiece-only tokenizer adds BOS unless
    tokenizer_config.json says add_bos_token: false (transformers' LlamaTokenizer default)."""
    if bos is None:
        return False
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            raise NodeFailed(f"{model_dir.name}/tokenizer.json cannot be loaded ({e}); "
                             "ship a valid tokenizer.json (or only tokenizer.model)") from None
        ids = tok.encode("a", add_special_tokens=True).ids
        return ids[:1] == [int(bos)]
    return bool(_load(model_dir / "tokenizer_config.json").get("add_bos_token", True))


def chat_config(model_dir: Path, hf: dict, c: ModelConfig, q: MlcQuant, conv_template: str | None) -> dict:
    arch = ARCHS[hf["architectures"][0]]
    gen = _load(model_dir / "generation_config.json")
    bos = gen.get("bos_token_id", hf.get("bos_token_id"))
    eos = _ids(gen.get("eos_token_id", hf.get("eos_token_id")))
    pad = gen.get("pad_token_id", hf.get("pad_token_id"))
    add_bos = tokenizer_adds_bos(model_dir, bos)
    sampling = {k: gen.get(k, v) for k, v in SAMPLING_DEFAULTS.items() if k != "repetition_penalty"}
    sampling["repetition_penalty"] = gen.get("repetition_penalty", 1.0)
    model_config = {k: v for k, v in c.to_dict().items()}
    return {
        "version": CHAT_CONFIG_VERSION,
        "model_type": arch.model_type,
        "quantization": q.code,
        "model_config": model_config,
        "vocab_size": c.vocab_size,
        "context_window_size": c.context_window_size,
        "sliding_window_size": c.sliding_window_size,
        "prefill_chunk_size": c.prefill_chunk_size,
        "attention_sink_size": -1,
        "tensor_parallel_shards": c.tensor_parallel_shards,
        "pipeline_parallel_stages": 1,
        **sampling,
        "tokenizer_files": [f for f in TOKENIZER_FILES if (model_dir / f).is_file()],
        "tokenizer_info": tokenizer_info(model_dir),
        "conv_template": template(conv_template or arch.conv_template, bos if add_bos else None, eos),
        "pad_token_id": int(pad) if pad is not None else 0,
        "bos_token_id": int(bos) if bos is not None else None,
        "eos_token_id": eos if len(eos) != 1 else eos[0],
    }


def write(model_dir: Path, out: Path, hf: dict, c: ModelConfig, q: MlcQuant, conv_template: str | None) -> dict:
    cfg = chat_config(model_dir, hf, c, q, conv_template)
    for name in cfg["tokenizer_files"]:
        shutil.copyfile(model_dir / name, out / name)
    (out / "mlc-chat-config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg
