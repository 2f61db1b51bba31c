"""Architecture knowledge in one place: a normalized decoder config and a support table per family.

`DecoderConfig.from_hf(config)` reads a Hugging Face config.json (as a dict) once and hides how the
families name their fields: head_dim defaults to hidden/heads, kv heads to heads, rope scaling is
normalized to its scaling fields (transformers >= 5 writes rope_theta into `rope_parameters`), a
sliding window that is switched off (`use_sliding_window: false`, null, 0) is None.

`FAMILIES` is the support table: HF `architectures` value -> `Family` (HF model_type, features the
architecture always has, and per backend either None = supported or the one-line reason it is not).
Backends, the planner and the tiny model generators read it; adding an architecture is a row here plus
the backend-specific model code (builders/backends/mlc/models/, a tiny config in builders/models/tiny.py).

Plan-side safe: no torch / transformers import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from builders.errors import ModelError

BACKENDS = ("gguf", "mlc", "coreml")


@dataclass(frozen=True)
class Family:
    name: str  # short name, also the tiny:<name> model and MLC's model definition module
    hf_arch: str  # config["architectures"][0]
    model_type: str  # HF config model_type
    qkv_bias: bool = False  # q/k/v projections always carry a bias (Qwen2), whatever attention_bias says
    # backend -> None (supported) or why not; a backend missing here does not support the family
    support: Mapping[str, str | None] = field(default_factory=dict)
    # backend -> model features its converter leaves out of the artifact (e.g. "sliding_window"): a model
    # that uses one within its context gets no faithful artifact there (the cell is listed unsupported)
    drops: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def reason(self, backend: str) -> str | None:
        if backend not in self.support:
            return f"the {backend} backend has no {self.hf_arch} implementation"
        return self.support[backend]


ALL = {b: None for b in BACKENDS}
# llama.cpp applies no sliding window for these families (their GGUF attends to every earlier token)
GGUF_NO_WINDOW = {"gguf": ("sliding_window",)}

FAMILIES: dict[str, Family] = {f.hf_arch: f for f in [
    Family("llama", "LlamaForCausalLM", "llama", support=ALL, drops=GGUF_NO_WINDOW),
    Family("qwen2", "Qwen2ForCausalLM", "qwen2", qkv_bias=True, support=ALL, drops=GGUF_NO_WINDOW),
    Family("mistral", "MistralForCausalLM", "mistral", support=ALL, drops=GGUF_NO_WINDOW),
    # Phi-3: a Llama-style decoder whose checkpoint stores q/k/v and gate/up fused (MLC: its parameter map
    # in mlc/models ARCHS; Core ML: coreml/weights.py splits them). llama.cpp's converter writes Phi-3's
    # sliding window but its loader disables it ("Phi SWA is currently disabled"); MLC refuses a context
    # wider than the window and Core ML one wider than its context option, so neither drops it. Not
    # implemented by MLC / Core ML: partial rotary (Phi-4-mini's partial_rotary_factor; their logit checks
    # fail such a model) and LongRoPE (MLC refuses rope types other than llama3 at plan time).
    Family("phi3", "Phi3ForCausalLM", "phi3", support=ALL, drops=GGUF_NO_WINDOW),
]}


def family(hf_arch: str) -> Family | None:
    return FAMILIES.get(hf_arch)


def drops(backend: str, hf_arch: str) -> tuple[str, ...]:
    """Model features `backend`'s converter leaves out for this family."""
    f = FAMILIES.get(hf_arch)
    return tuple(f.drops.get(backend, ())) if f else ()


def supported(backend: str) -> tuple[str, ...]:
    """HF `architectures` values the backend builds."""
    return tuple(a for a, f in FAMILIES.items() if f.reason(backend) is None)


def unsupported_reason(backend: str, hf_arch: str) -> str | None:
    """Why `backend` cannot build an `hf_arch` model (one line), else None."""
    f = FAMILIES.get(hf_arch)
    why = f.reason(backend) if f else "not in the support table builders/archs.py"
    if why is None:
        return None
    return (f"architecture {hf_arch} is not supported by the {backend} backend ({why}; supported: "
            f"{', '.join(supported(backend))})")


ROPE_SCALING_KEYS = ("rope_type", "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_scaling(config: Mapping[str, Any]) -> dict[str, Any]:
    """The scaling fields of `rope_scaling` / `rope_parameters` ({} for plain rope), rope_type named so."""
    raw = dict(config.get("rope_scaling") or config.get("rope_parameters") or {})
    if "rope_type" not in raw and "type" in raw:
        raw["rope_type"] = raw["type"]
    scaling = {k: v for k, v in raw.items() if k in ROPE_SCALING_KEYS}
    return scaling if scaling.get("rope_type") not in (None, "default") else {}


@dataclass(frozen=True)
class DecoderConfig:
    """A decoder-only transformer as every backend needs it, whatever the family calls the fields."""

    family: str  # Family.name
    hf_arch: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    norm_eps: float
    rope_theta: float
    rope_scaling: Mapping[str, Any]  # {} for plain rope, else the scaling fields (rope_type, factor, ...)
    sliding_window: int | None  # None: every token attends to all earlier ones
    max_positions: int | None
    tied_embeddings: bool
    qkv_bias: bool
    mlp_bias: bool

    @classmethod
    def from_hf(cls, config: Mapping[str, Any], what: str = "config.json") -> "DecoderConfig":
        arch = (config.get("architectures") or [None])[0]
        fam = FAMILIES.get(arch)
        if fam is None:
            raise ModelError(f"{what}: architecture {arch} is not supported (known: {', '.join(FAMILIES)}); "
                             "use a model of a listed family")
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            rope_in = config.get("rope_scaling") or config.get("rope_parameters") or {}
            window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
            return cls(
                family=fam.name, hf_arch=arch, hidden=hidden,
                intermediate=int(config["intermediate_size"]),
                layers=int(config["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                vocab=int(config["vocab_size"]),
                norm_eps=float(config.get("rms_norm_eps", 1e-6)),
                rope_theta=float(config.get("rope_theta") or rope_in.get("rope_theta") or 10000.0),
                rope_scaling=rope_scaling(config),
                sliding_window=int(window) if window else None,
                max_positions=int(config["max_position_embeddings"]) if config.get("max_position_embeddings")
                else None,
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
                qkv_bias=fam.qkv_bias or bool(config.get("attention_bias", False)),
                mlp_bias=bool(config.get("mlp_bias", False)),
            )
        except KeyError as e:
            raise ModelError(f"{what}: {arch} config has no field {e.args[0]!r}; it must be a complete "
                             "Hugging Face config.json") from None
        except (TypeError, ValueError) as e:
            raise ModelError(f"{what}: a {arch} config field has a bad value ({e}); fix config.json") from None

    @classmethod
    def read(cls, model_dir: Path) -> "DecoderConfig":
        path = Path(model_dir) / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"{path}: cannot read it ({e}); it must be a Hugging Face config.json") from None
        return cls.from_hf(config, str(path))

    def window_below(self, context: int | None) -> bool:
        """True when the sliding window is shorter than `context` tokens (None: the model's whole context),
        i.e. an artifact attending to all earlier tokens computes other logits within that context."""
        if self.sliding_window is None:
            return False
        limit = context if context else self.max_positions
        return limit is None or self.sliding_window < limit
