"""A local HF model dir (random weights, real tokenizer) whose logits have a real scale.

Random init gives nearly flat logits; scaled as DESIGN.md "Facts added" says (embeddings and LM head std 0.15,
1/sqrt(fan_in) elsewhere, final norm 4) the logits reach about +-40, like a trained model's. With
hidden 320 (not a multiple of 256) llama.cpp cannot use K-quant blocks for most matrices.
"""

from __future__ import annotations

import json
from pathlib import Path

from builders.models import tiny


def make_scaled_model(out: Path, hidden: int = 320, final_norm: float = 4.0, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tiny.train_tokenizer(tiny.write_corpus(out), out)
    (out / "corpus.txt").unlink()
    cfg = {**tiny.tiny_config("llama"), "hidden_size": hidden, "intermediate_size": 2 * hidden + 64,
           "num_attention_heads": hidden // 64, "num_key_value_heads": 1, "head_dim": 64}
    cfg.pop("model_type")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **cfg), dtype=torch.float32,
                                             attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("embed_tokens.weight", "lm_head.weight")):
                p.normal_(0.0, 0.15)
            elif name == "model.norm.weight":
                p.fill_(final_norm)
            elif p.ndim == 2:
                p.normal_(0.0, p.shape[1] ** -0.5)
    model.save_pretrained(out, safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("transformers_version", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


if __name__ == "__main__":
    import sys

    make_scaled_model(Path(sys.argv[1]))
