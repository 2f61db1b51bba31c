"""The original transformers model evaluated in fp32 with replaced weights (e.g. an artifact's own
dequantized weights), without ever holding the whole fp32 model.

A weight is handed over as an array or as a loader (a callable that returns the array, e.g. one tensor
dequantized from a .gguf file). The model's parameters are placeholders on torch's meta device; each
module's parameters are materialized in fp32 for its own forward call and dropped after it. The two
vocabulary-sized tables never are whole: the embedding materializes the rows of the ids looked up and
the LM head a block of rows (fp32_compute.block_rows) at a time (a loader with a `rows(sel)` method reads just those rows; see
verify/gguf_weights.TensorLoader). So the peak is one decoder matrix in fp32 plus activations and the
logits, and `forward_batch` runs all sequences through one batched pass: every loader runs once per
module call, i.e. once per pass. Threads: every CPU this process may use (the figures are
manifest-only, never part of a digest)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from builders.verify.fp32_compute import BLOCK_ROWS, block_rows, cpu_threads, logits_batch


class HfModel:
    def __init__(self, model_dir: Path, threads: int | None = None):
        import torch  # noqa: PLC0415
        from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415
        from transformers.initialization import no_init_weights  # noqa: PLC0415

        torch.set_num_threads(threads or cpu_threads())
        self.config = AutoConfig.from_pretrained(str(model_dir))
        with no_init_weights():  # parameters are replaced by placeholders below: no random init, no memory
            self.model = AutoModelForCausalLM.from_config(self.config, dtype=torch.float32,
                                                          attn_implementation="eager")
        self.model.eval()
        # with tied embeddings lm_head.weight is listed too (the same tensor): a file may carry either name
        self.params = {n: tuple(p.shape) for n, p in self.model.named_parameters(remove_duplicate=False)}
        self.tied = bool(getattr(self.config, "tie_word_embeddings", False))
        self.sources: dict[str, Callable[[], np.ndarray] | np.ndarray] = {}
        self._owners = []  # (module, {local name: full name})
        for mname, module in self.model.named_modules():
            local = {n: f"{mname}.{n}" if mname else n for n, p in module._parameters.items() if p is not None}
            if not local:
                continue
            for n in local:
                module._parameters[n] = torch.nn.Parameter(
                    torch.empty(module._parameters[n].shape, device="meta"), requires_grad=False)
            if type(module) is torch.nn.Embedding:
                module.forward = self._embedding_forward(module, local["weight"])
                continue
            if type(module) is torch.nn.Linear and module.out_features == self.config.vocab_size:  # the LM head
                module.forward = self._blocked_linear_forward(module, local)
                continue
            module.register_forward_pre_hook(self._materialize)
            module.register_forward_hook(self._release)
            self._owners.append((module, local))
        self._names = {id(m): local for m, local in self._owners}

    @property
    def filled(self) -> set[str]:
        return set(self.sources)

    def put(self, name: str, array) -> None:
        """The weight of parameter `name`: an array, or a callable returning it (run at each use)."""
        shape = self.params.get(name)
        if shape is None:
            raise KeyError(f"the HF model has no parameter {name}")
        if not callable(array) and tuple(np.shape(array)) != shape:
            raise ValueError(f"{name}: shape {tuple(np.shape(array))} does not fit the HF parameter {shape}")
        self.sources[name] = array

    def _source(self, name: str):
        if name not in self.sources and self.tied and name == "lm_head.weight":
            name = "model.embed_tokens.weight"
        if name not in self.sources:
            raise KeyError(f"no weight was put into {name}")
        return self.sources[name]

    def _tensor(self, name: str):
        import torch  # noqa: PLC0415

        src = self._source(name)
        array = np.asarray(src() if callable(src) else src)
        if tuple(array.shape) != self.params[name]:
            raise ValueError(f"{name}: shape {tuple(array.shape)} does not fit the HF parameter {self.params[name]}")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def _rows(self, name: str, sel, whole: dict):
        """Rows `sel` of parameter `name` as float32: a loader with a `rows` method reads only those rows;
        any other source is loaded whole once per pass (kept in `whole` for the pass) and sliced."""
        import torch  # noqa: PLC0415

        src = self._source(name)
        if callable(src) and hasattr(src, "rows"):
            array = np.asarray(src.rows(sel))
        else:
            key = id(src)
            if key not in whole:
                whole[key] = np.asarray(src() if callable(src) else src)
                if tuple(whole[key].shape) != self.params[name]:
                    raise ValueError(f"{name}: shape {tuple(whole[key].shape)} does not fit the HF parameter "
                                     f"{self.params[name]}")
            array = whole[key][sel]
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def _embedding_forward(self, module, name: str):
        """Only the rows of the ids looked up are materialized (a vocabulary-sized table never is)."""
        import torch  # noqa: PLC0415

        def forward(ids):
            unique, inverse = torch.unique(ids, return_inverse=True)
            return self._rows(name, unique.numpy(), {})[inverse]
        return forward

    def _blocked_linear_forward(self, module, local: dict):
        """A vocabulary-sized linear layer (the LM head) a block of output rows at a time, written in place."""
        import torch  # noqa: PLC0415
        import torch.nn.functional as F  # noqa: PLC0415

        def forward(x):
            whole: dict = {}
            n = module.out_features
            out = torch.empty((*x.shape[:-1], n), dtype=torch.float32)
            step = block_rows(module.in_features, BLOCK_ROWS)
            for i in range(0, n, step):
                rows = slice(i, min(n, i + step))
                bias = self._rows(local["bias"], rows, whole) if "bias" in local else None
                out[..., rows] = F.linear(x, self._rows(local["weight"], rows, whole), bias)
            return out
        return forward

    def _materialize(self, module, _args):
        import torch  # noqa: PLC0415

        for local, full in self._names[id(module)].items():
            module._parameters[local] = torch.nn.Parameter(self._tensor(full), requires_grad=False)

    def _release(self, module, _args, _output):
        import torch  # noqa: PLC0415

        for local in self._names[id(module)]:
            p = module._parameters[local]
            module._parameters[local] = torch.nn.Parameter(torch.empty(p.shape, device="meta"), requires_grad=False)

    def missing(self) -> list[str]:
        """Parameters no weight was put into (a tied lm_head is filled through the embeddings)."""
        return [n for n in self.params if n not in self.sources and not (self.tied and n == "lm_head.weight")]

    def forward_batch(self, sequences: Sequence[np.ndarray]) -> list[np.ndarray]:
        """fp32 logits [len(seq), vocab] of every sequence, all in one right-padded batch: a position
        attends only to earlier positions, so the padding after a sequence changes none of its logits."""
        import torch  # noqa: PLC0415

        with torch.no_grad():
            return logits_batch(self.model, sequences)

    def forward(self) -> Callable[[np.ndarray], np.ndarray]:
        def run(tokens: np.ndarray) -> np.ndarray:
            return self.forward_batch([tokens])[0]

        return run
