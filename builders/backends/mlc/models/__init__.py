"""Architectures as data: HF `architectures` value -> the relax nn.Module that implements it, MLC's
`model_type`, the default conversation template, and how HF tensor names map to ours.

`parameters(config, hf_arch)` is the one description of the parameter layout (names, shapes, and the
checkpoint tensors each is made of) that the weights converter, the library check and compile read.
`ModelConfig.from_hf(config, options)` is plan-side safe (no tvm import); the nn.Modules live in
llama.py / qwen2.py / mistral.py and are imported only when a library is compiled.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from builders.archs import DecoderConfig


# The checkpoint names of our fused parameters: our module in a decoder layer -> the HF modules whose
# rows it concatenates (q/k/v and gate/up stored apart, as Llama, Qwen2 and Mistral do). A family that
# stores a module fused under our name (Phi-3's qkv_proj and gate_up_proj) leaves it out.
SEPARATE: dict[str, tuple[str, ...]] = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


@dataclass(frozen=True)
class Arch:
    hf_arch: str
    model_type: str  # MLC's model_type
    module: str  # module under builders.backends.mlc.models exposing the nn.Module class `CausalLM`
    conv_template: str  # MLC conversation template name used by default
    unfused: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: SEPARATE)  # see SEPARATE


ARCHS: dict[str, Arch] = {a.hf_arch: a for a in [
    Arch("LlamaForCausalLM", "llama", "llama", "llama-3"),
    Arch("Qwen2ForCausalLM", "qwen2", "qwen2", "qwen2"),
    Arch("MistralForCausalLM", "mistral", "mistral", "mistral_default"),
    # Phi-3 (no partial rotary, no LongRoPE): the Llama module; the checkpoint is already fused as ours
    Arch("Phi3ForCausalLM", "phi3", "llama", "phi-3", unfused={}),
]}


@dataclass(frozen=True)
class Param:
    """One unquantized parameter of the model library and the checkpoint tensors it is made of."""

    name: str  # ours (MLC's), e.g. model.layers.0.self_attn.qkv_proj.weight
    shape: tuple[int, ...]
    sources: tuple[tuple[str, int], ...]  # (HF tensor name, rows), concatenated along dim 0 in this order


def parameters(c: "ModelConfig", hf_arch: str) -> list[Param]:
    """The parameter layout, in the nn.Module's declaration order (models/llama.py declares it; compile.py
    checks the two agree): what convert_weight.py writes and reference.py reads back into HF names."""
    unfused = ARCHS[hf_arch].unfused
    h, d, inter = c.hidden_size, c.head_dim, c.intermediate_size
    q_rows, kv_rows = c.num_attention_heads * d, c.num_key_value_heads * d
    rows = {"self_attn.qkv_proj": (q_rows, kv_rows, kv_rows), "mlp.gate_up_proj": (inter, inter)}

    def param(name: str, shape: tuple[int, ...]) -> Param:
        m = re.fullmatch(r"(model\.layers\.\d+)\.(.+)\.(weight|bias)", name)
        if not m or m.group(2) not in unfused:
            return Param(name, shape, ((name, shape[0]),))
        layer, module, kind = m.groups()
        return Param(name, shape, tuple((f"{layer}.{src}.{kind}", n)
                                        for src, n in zip(unfused[module], rows[module])))

    qkv = sum(rows["self_attn.qkv_proj"])
    out = [param("model.embed_tokens.weight", (c.vocab_size, h))]
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}"
        out.append(param(f"{p}.input_layernorm.weight", (h,)))
        out.append(param(f"{p}.self_attn.qkv_proj.weight", (qkv, h)))
        if c.qkv_bias:
            out.append(param(f"{p}.self_attn.qkv_proj.bias", (qkv,)))
        out += [param(f"{p}.self_attn.o_proj.weight", (h, c.num_attention_heads * d)),
                param(f"{p}.post_attention_layernorm.weight", (h,)),
                param(f"{p}.mlp.gate_up_proj.weight", (2 * inter, h)),
                param(f"{p}.mlp.down_proj.weight", (h, inter))]
    out.append(param("model.norm.weight", (h,)))
    if not c.tie_word_embeddings:
        out.append(param("lm_head.weight", (c.vocab_size, h)))
    return out


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
