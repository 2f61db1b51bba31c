"""Conversation templates written into mlc-chat-config.json (MLC's Conversation JSON fields).
Stop/prefix token ids are filled from the model's own tokenizer config at gen_config time."""

from __future__ import annotations

CONV_TEMPLATES: dict[str, dict] = {
    "llama-3": {
        "system_template": "<|start_header_id|>system<|end_header_id|>\n\n{system_message}<|eot_id|>",
        "system_message": "You are a helpful, respectful and honest assistant.",
        "roles": {"user": "<|start_header_id|>user", "assistant": "<|start_header_id|>assistant"},
        "seps": ["<|eot_id|>"], "role_content_sep": "<|end_header_id|>\n\n",
        "role_empty_sep": "<|end_header_id|>\n\n", "stop_str": ["<|end_of_text|>", "<|eot_id|>"],
        "add_role_after_system_message": True,
    },
    "qwen2": {
        "system_template": "<|im_start|>system\n{system_message}<|im_end|>\n",
        "system_message": "You are a helpful assistant.",
        "roles": {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"},
        "seps": ["<|im_end|>\n"], "role_content_sep": "\n", "role_empty_sep": "\n",
        "stop_str": ["<|endoftext|>", "<|im_end|>"], "add_role_after_system_message": True,
    },
    "mistral_default": {
        "system_template": "[INST] {system_message}",
        "system_message": "Always assist with care, respect, and truth.",
        "roles": {"user": "[INST]", "assistant": "[/INST]"},
        "seps": [" "], "role_content_sep": " ", "role_empty_sep": "", "stop_str": ["</s>"],
        "add_role_after_system_message": False,
    },
    "phi-3": {  # MLC's "phi-3" (stop ids come from the model: Phi-3's <|endoftext|> <|assistant|> <|end|>)
        "system_template": "<|system|>\n{system_message}",
        "system_message": "You are a helpful digital assistant. Please provide safe, ethical and accurate "
                          "information to the user.",
        "roles": {"user": "<|user|>", "assistant": "<|assistant|>"},
        "seps": ["<|end|>\n"], "role_content_sep": "\n", "role_empty_sep": "\n",
        "stop_str": ["<|endoftext|>"], "add_role_after_system_message": True,
    },
    "LM": {  # plain language model: no roles, no system prompt
        "system_template": "{system_message}", "system_message": "",
        "roles": {"user": "", "assistant": ""}, "seps": [""], "role_content_sep": "", "role_empty_sep": "",
        "stop_str": [], "add_role_after_system_message": True,
    },
}


def template(name: str, bos: int | None, eos: list[int]) -> dict:
    t = dict(CONV_TEMPLATES[name])
    return {"name": name, **t, "role_templates": {"user": "{user_message}", "assistant": "{assistant_message}",
                                                 "tool": "{tool_message}"},
            "messages": [], "stop_token_ids": list(eos),
            "system_prefix_token_ids": [bos] if bos is not None else None, "function_string": "",
            "use_function_calling": False}
