"""llama.cpp's logits for several token sequences in one decode (llama-cpp-python's low-level C API).

The check scores ~7 short sequences (the prompts with their continuations, the perplexity text).
Evaluated one after the other, llama.cpp streams every weight of the model once per sequence; a 0.5B F16
model spent most of its verify time there. Here all sequences go into one `llama_batch`, each with its
own sequence id and positions from 0, every position marked for logits, and the context keeps one
unified KV cache for all of them (`kv_unified`), so attention never crosses sequences: one decode, the
weights read once per micro-batch of UBATCH positions. The logits are handed out as views of the
context's buffer while it lives (`decoded`), not copied. Runs inside the gguf image (llama_cpp).
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np


class LlamaCppError(RuntimeError):
    """llama.cpp refused the file or the batch (the message says which call)."""


UBATCH = 128  # positions per llama.cpp micro-batch (n_ubatch): the prompts' ~120 positions in one


def context_size(lengths: Sequence[int], multiple: int = 64) -> int:
    """KV cells for all sequences at once, rounded up."""
    total = sum(lengths)
    return -(-total // multiple) * multiple


@contextmanager
def decoded(model_path: Path, sequences: Sequence[Sequence[int]], threads: int) -> Iterator[list[np.ndarray]]:
    """float32 logits [len(seq), n_vocab] of every sequence, from one llama_decode: read-only views of the
    context's own logits buffer, valid inside the `with` (the figures are computed on them there; copy what
    must outlive it). No copy of the vocabulary-wide logits is made, and the model and context are freed
    on leaving."""
    import llama_cpp as L  # noqa: PLC0415

    seqs = [[int(t) for t in s] for s in sequences]
    if not seqs or not all(seqs):
        raise LlamaCppError("no tokens to evaluate")
    total = sum(len(s) for s in seqs)
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(model_path).encode(), mparams)
    if not model:
        raise LlamaCppError(f"llama_model_load_from_file could not load {Path(model_path).name}")
    ctx = batch = None
    try:
        cparams = L.llama_context_default_params()
        cparams.n_ctx = context_size([len(s) for s in seqs])
        cparams.n_batch = total
        # the compute buffer holds a micro-batch's activations and its [n_ubatch, vocab] output: a fixed
        # micro-batch keeps it small whatever the number of positions (the decode takes the same time)
        cparams.n_ubatch = min(total, UBATCH)
        cparams.n_seq_max = len(seqs)
        cparams.kv_unified = True
        cparams.n_threads = cparams.n_threads_batch = threads
        ctx = L.llama_init_from_model(model, cparams)
        if not ctx:
            raise LlamaCppError(f"llama_init_from_model failed (n_ctx {cparams.n_ctx}, {len(seqs)} sequences)")
        batch = L.llama_batch_init(total, 0, 1)
        i = 0
        for sid, s in enumerate(seqs):
            for pos, tok in enumerate(s):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, 1
                batch.seq_id[i][0] = sid
                i += 1
        batch.n_tokens = total
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise LlamaCppError(f"llama_decode of {total} tokens in {len(seqs)} sequences returned {rc}")
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        ptr = L.llama_get_logits(ctx)
        flat = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(total, n_vocab))
        flat.flags.writeable = False
        yield np.split(flat, np.cumsum([len(s) for s in seqs])[:-1])
    finally:
        if batch is not None:
            L.llama_batch_free(batch)
        if ctx:
            L.llama_free(ctx)
        L.llama_model_free(model)
