"""The original transformers model evaluated in fp32 with replaced weights (e.g. an artifact's own
dequantized weights). Weights are copied into the model one tensor at a time, so the peak memory is
the fp32 model plus one tensor."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np


class HfModel:
    def __init__(self, model_dir: Path, threads: int | None = None):
        import torch  # noqa: PLC0415
        from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.config = AutoConfig.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32, attn_implementation="eager")
        self.model.eval()
        # with tied embeddings lm_head.weight is listed too (the same tensor): a file may carry either name
        self.params = dict(self.model.named_parameters(remove_duplicate=False))
        self.filled: set[str] = set()

    def put(self, name: str, array: np.ndarray) -> None:
        import torch  # noqa: PLC0415

        p = self.params.get(name)
        if p is None:
            raise KeyError(f"the HF model has no parameter {name}")
        if tuple(p.shape) != tuple(array.shape):
            raise ValueError(f"{name}: shape {tuple(array.shape)} does not fit the HF parameter {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(torch.from_numpy(np.ascontiguousarray(array)))
        self.filled.add(name)

    def missing(self) -> list[str]:
        """Parameters no weight was put into (a tied lm_head is filled through the embeddings)."""
        tied = bool(getattr(self.config, "tie_word_embeddings", False))
        return [n for n in self.params if n not in self.filled and not (tied and n == "lm_head.weight")]

    def forward(self) -> Callable[[np.ndarray], np.ndarray]:
        import torch  # noqa: PLC0415

        def run(tokens: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                ids = torch.tensor(np.asarray(tokens, dtype=np.int64)[None])
                return self.model(input_ids=ids).logits[0].float().numpy()

        return run
