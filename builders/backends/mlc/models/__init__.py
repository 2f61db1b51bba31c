"""Architectures as data: HF `architectures` value -> the relax nn.Module that implements it, MLC's
`model_type`, the default conversation template, and how HF tensor names map to ours.

`ModelConfig.from_hf(config, options)` is plan-side safe (no tvm import); the nn.Modules live in
llama.py / qwen2.py / mistral.py and are imported only when a library is compiled.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from builders.archs import DecoderConfig


@dataclass(frozen=True)
class Arch:
    hf_arch: str
    model_type: str  # MLC's model_type
    module: str  # module under builders.backends.mlc.models exposing the nn.Module class `CausalLM`
    conv_template: str  # MLC conversation template name used by default


ARCHS: dict[str, Arch] = {a.hf_arch: a for a in [
    Arch("LlamaForCausalLM", "llama", "llama", "llama-3"),
    Arch("Qwen2ForCausalLM", "qwen2", "qwen2", "qwen2"),
    Arch("MistralForCausalLM", "mistral", "mistral", "mistral_default"),
]}

# our parameter name -> HF source tensor names, concatenated along dim 0 (fused projections as in MLC)
FUSED: list[tuple[str, tuple[str, ...]]] = [
    (r"(model\.layers\.\d+\.self_attn)\.qkv_proj\.(weight|bias)", ("{0}.q_proj.{1}", "{0}.k_proj.{1}", "{0}.v_proj.{1}")),
    (r"(model\.layers\.\d+\.mlp)\.gate_up_proj\.(weight)", ("{0}.gate_proj.{1}", "{0}.up_proj.{1}")),
]


def hf_sources(name: str) -> tuple[str, ...]:
    """HF tensor names that make our (unquantized) parameter `name`."""
    for pattern, sources in FUSED:
        m = re.fullmatch(pattern, name)
        if m:
            return tuple(s.format(*m.groups()) for s in sources)
    return (name,)


@dataclass
class ModelConfig:
    """What the nn.Module needs (MLC's `model_config` fields in mlc-chat-config.json)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    position_embedding_base: float
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    sliding_window_size: int = -1
    context_window_size: int = 512
    prefill_chunk_size: int = 128
    tensor_parallel_shards: int = 1
    max_batch_size: int = 1

    @classmethod
    def from_hf(cls, hf: dict, options: dict) -> "ModelConfig":
        d = DecoderConfig.from_hf(hf)  # the family's own field names and defaults: builders/archs.py
        ctx = int(options.get("context_window_size") or d.max_positions or 2048)
        return cls(
            hidden_size=d.hidden,
            intermediate_size=d.intermediate,
            num_hidden_layers=d.layers,
            num_attention_heads=d.heads,
            num_key_value_heads=d.kv_heads,
            head_dim=d.head_dim,
            vocab_size=d.vocab,
            rms_norm_eps=d.norm_eps,
            position_embedding_base=d.rope_theta,
            rope_scaling=dict(d.rope_scaling),
            tie_word_embeddings=d.tied_embeddings,
            qkv_bias=d.qkv_bias,
            sliding_window_size=d.sliding_window or -1,
            context_window_size=ctx,
            prefill_chunk_size=min(int(options.get("prefill_chunk_size") or ctx), ctx),
        )

    def unsupported(self) -> str | None:
        """Why this backend cannot build the model as configured, else None."""
        rope_type = self.rope_scaling.get("rope_type")
        if rope_type not in (None, "llama3"):
            return f"rope_scaling type '{rope_type}' is not implemented by the mlc backend (only llama3)"
        if 0 < self.sliding_window_size < self.context_window_size:
            return (f"context_window_size {self.context_window_size} exceeds the model's sliding_window "
                    f"{self.sliding_window_size}: set mlc option context_window_size <= {self.sliding_window_size}")
        return None

    def to_dict(self) -> dict:
        return asdict(self)
