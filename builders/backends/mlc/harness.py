"""Runtime harness: load a compiled model library + an MLC weights dir with TVM's runtime and run
it the way MLC's engine does (paged KV cache, `embed` -> `batch_prefill`/`prefill` -> `decode`).

`Session.forward(tokens, prompt_len)` returns float32 logits [n, vocab] for every position of a
teacher-forced token sequence: the prompt goes through chunked prefill (all positions' logits via
`batch_prefill`'s logit_positions), every later token through one `decode` step each.
`Session.forward_many(sequences)` prefills several sequences in one `batch_prefill` call each time
their tokens fit a prefill chunk (one KV-cache sequence each, as MLC's engine batches requests).

Memory: each call's logits are copied out of TVM once (float32 already: the library's LM head writes
float32) and TVM's pooled allocator is emptied after every call, so buffers of the calls' different
shapes do not pile up in the pool; `chunk` (default the library's prefill_chunk_size) caps the positions
per prefill call, and with it the largest logits buffer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PAGE_SIZE = 16


class Session:
    def __init__(self, lib: Path, weights: Path, device: str = "cpu", chunk: int | None = None):
        import tvm
        from tvm import relax
        from tvm.runtime import ShapeTuple

        self.tvm, self.ShapeTuple = tvm, ShapeTuple
        self.dev = tvm.device(device, 0)
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), self.dev)
        self.metadata = json.loads(str(self.vm["_metadata"]()))
        self.params = self._load_params(Path(weights))
        self.kv = None
        md = self.metadata
        self.ctx, self.chunk = md["context_window_size"], md["prefill_chunk_size"]
        if chunk is not None:
            self.chunk = max(1, min(self.chunk, chunk))
        self.hidden = md["hidden_size"]
        self.dtype = md["model_dtype"]
        self._fn = {name: tvm.get_global_func(f"vm.builtin.{name}") for name in (
            "kv_state_add_sequence", "kv_state_remove_sequence", "kv_state_begin_forward",
            "kv_state_end_forward", "memory_manager.clear")}

    def _load_params(self, weights: Path):
        """Parameters by name in the order the library's metadata lists them (as MLC's runtime does)."""
        tvm = self.tvm
        tvm.get_global_func("vm.builtin.tensor_cache.load")(str(weights), self.dev.dlpack_device_type(), 0)
        names = [p["name"] for p in self.metadata["params"]]
        params = tvm.get_global_func("vm.builtin.param_array_from_cache_by_name")(names)
        tvm.get_global_func("vm.builtin.tensor_cache.clear")()
        return params

    def _new_sequence(self) -> None:
        S = self.ShapeTuple
        self.kv = self.vm["create_tir_paged_kv_cache"](S([1]), S([self.ctx]), S([self.chunk]), S([PAGE_SIZE]), S([0]))
        self._fn["kv_state_add_sequence"](self.kv, 0)

    def _embed(self, ids: np.ndarray) -> "object":
        tvm = self.tvm
        emb = self.vm["embed"](tvm.runtime.tensor(ids.astype(np.int32), self.dev), self.params).numpy()
        return tvm.runtime.tensor(emb.reshape(1, len(ids), self.hidden), self.dev)

    def _step(self, fn: str, ids: np.ndarray, positions: np.ndarray | None = None) -> np.ndarray:
        S, tvm = self.ShapeTuple, self.tvm
        self._fn["kv_state_begin_forward"](self.kv, S([0]), S([len(ids)]))
        args = [self._embed(ids)]
        if positions is not None:
            args.append(tvm.runtime.tensor(positions.astype(np.int32), self.dev))
        logits, self.kv = self.vm[fn](*args, self.kv, self.params)
        self._fn["kv_state_end_forward"](self.kv)
        return self._take(logits)

    def _take(self, logits) -> np.ndarray:
        """The call's logits as float32 numpy [n, vocab] (one copy), its TVM buffers given back to the system."""
        out = logits.numpy()
        out = out.reshape(-1, out.shape[-1]).astype(np.float32, copy=False)
        del logits
        self._fn["memory_manager.clear"]()
        return out

    def forward(self, tokens, prompt_len: int | None = None) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int32)
        if len(tokens) > self.ctx:
            raise ValueError(f"{len(tokens)} tokens exceed the library's context_window_size {self.ctx}")
        prompt_len = len(tokens) if prompt_len is None else prompt_len
        self._new_sequence()
        out = []
        for start in range(0, prompt_len, self.chunk):
            ids = tokens[start: min(prompt_len, start + self.chunk)]
            out.append(self._step("batch_prefill", ids, np.arange(len(ids))))
        for t in tokens[prompt_len:]:
            out.append(self._step("decode", np.array([t])))
        return out[0] if len(out) == 1 else np.concatenate(out)

    def forward_many(self, sequences) -> list[np.ndarray]:
        """float32 logits [n_i, vocab] at every position of each sequence, several sequences per call."""
        seqs = [np.asarray(t, dtype=np.int32) for t in sequences]
        out: list[np.ndarray | None] = [None] * len(seqs)
        group: list[int] = []
        for i, t in enumerate(seqs):
            if len(t) > self.chunk:
                out[i] = self.forward(t)
                continue
            if group and sum(len(seqs[j]) for j in group) + len(t) > self.chunk:
                self._prefill_group(seqs, group, out)
                group = []
            group.append(i)
        if group:
            self._prefill_group(seqs, group, out)
        return out

    def _prefill_group(self, seqs: list[np.ndarray], group: list[int], out: list) -> None:
        S, tvm = self.ShapeTuple, self.tvm
        self.kv = self.vm["create_tir_paged_kv_cache"](S([len(group)]), S([self.ctx]), S([self.chunk]),
                                                        S([PAGE_SIZE]), S([0]))
        for slot in range(len(group)):
            self._fn["kv_state_add_sequence"](self.kv, slot)
        lengths = [len(seqs[i]) for i in group]
        self._fn["kv_state_begin_forward"](self.kv, S(list(range(len(group)))), S(lengths))
        ids = np.concatenate([seqs[i] for i in group])
        positions = tvm.runtime.tensor(np.arange(len(ids), dtype=np.int32), self.dev)
        logits, self.kv = self.vm["batch_prefill"](self._embed(ids), positions, self.kv, self.params)
        self._fn["kv_state_end_forward"](self.kv)
        flat = self._take(logits)
        for i, part in zip(group, np.split(flat, np.cumsum(lengths)[:-1])):
            out[i] = part

    def close(self) -> None:
        """Drop the library's weights, KV cache and VM, and return TVM's pooled memory to the system
        (the pooled allocator keeps every freed buffer otherwise)."""
        import gc

        self.kv = self.params = self.vm = None
        gc.collect()
        self._fn["memory_manager.clear"]()

    def prefill_last(self, tokens) -> np.ndarray:
        """Logits of the last prompt position through the single-sequence `prefill` entry point."""
        self._new_sequence()
        return self._step("prefill", np.asarray(tokens, dtype=np.int32))[-1]
