"""Mistral: the Llama-family decoder; its sliding window is recorded in ModelConfig and the library
metadata. Contexts wider than the window are refused at plan time (ModelConfig.unsupported)."""

from builders.backends.mlc.models.llama import CausalLM as LlamaCausalLM


class CausalLM(LlamaCausalLM):
    """MistralForCausalLM."""
