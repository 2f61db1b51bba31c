"""Qwen2: the Llama-family decoder with qkv bias and (usually) tied embeddings, both read from
ModelConfig (`qkv_bias`, `tie_word_embeddings`)."""

from builders.backends.mlc.models.llama import CausalLM as LlamaCausalLM


class CausalLM(LlamaCausalLM):
    """Qwen2ForCausalLM."""
