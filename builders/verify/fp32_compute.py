"""fp32 math over weights kept at the checkpoint's size: a transformers model whose parameters stay in
the dtype they were stored in (bf16/fp16) and are upcast to float32 for their own module's forward
call only.

The upcast bf16/fp16 -> fp32 is exact, so every module computes with the same fp32 weights a model
loaded with `from_pretrained(dtype=torch.float32)` holds, on fp32 activations: the logits are those of
the fp32 model (tests/test_verify_scale.py checks them bit for bit), while the resident weights take
1x the checkpoint instead of 2x. Two modules are special-cased so that no vocabulary-sized matrix is
ever widened whole: an embedding gathers its rows in the stored dtype and widens only them, and a
linear layer with more than BLOCK_ROWS output rows (the LM head) multiplies a block of rows (BLOCK_BYTES of fp32) at a time
(each logit is the same dot product: the result is identical). Peak memory: the checkpoint + one
decoder matrix in fp32 + activations. A float32 checkpoint needs no hooks at all.
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_threads() -> int:
    """CPUs this process may run on (its affinity mask: a container's --cpuset-cpus, taskset)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _swap_in(module, _args):
    import torch  # noqa: PLC0415

    stash = {}
    for name, p in module._parameters.items():
        if p is not None and p.dtype != torch.float32:
            stash[name] = p
            module._parameters[name] = torch.nn.Parameter(p.detach().float(), requires_grad=False)
    module._fp32_stash = stash


def _swap_out(module, _args, _output):
    module._parameters.update(getattr(module, "_fp32_stash", {}))
    module._fp32_stash = {}


BLOCK_ROWS = 16384  # a linear layer with more output rows than this (the LM head) is multiplied in blocks
BLOCK_BYTES = 32 << 20  # ... of at most this many fp32 bytes (2048 rows of a 4096-wide head, 9362 of an 896-wide)


def block_rows(cols: int, cap: int = BLOCK_ROWS) -> int:
    """Output rows of a blocked linear layer widened to fp32 at a time: BLOCK_BYTES of fp32 weights, at
    most `cap` rows. Only the output-row blocking changes: each logit is the same dot product."""
    return max(1, min(cap, BLOCK_BYTES // (4 * max(1, cols))))


def _embedding_forward(module):
    import torch.nn.functional as F  # noqa: PLC0415

    def forward(ids):
        return F.embedding(ids, module.weight, module.padding_idx).float()  # widening after the gather: exact
    return forward


def _blocked_linear_forward(module):
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    def forward(x):
        w, b = module.weight, module.bias
        out = torch.empty((*x.shape[:-1], w.shape[0]), dtype=torch.float32)  # filled in place: no concatenated copy
        step = block_rows(w.shape[1])
        for i in range(0, w.shape[0], step):
            out[..., i:i + step] = F.linear(x, w[i:i + step].float(), None if b is None else b[i:i + step].float())
        return out
    return forward


def upcast_per_module(model) -> int:
    """Make every module that owns non-fp32 parameters compute with fp32 copies of them, made for its own
    call and dropped after (embeddings and big linear layers: see the module docstring). Returns how many
    modules were changed."""
    import torch  # noqa: PLC0415

    hooked = 0
    for module in model.modules():
        if not any(p.dtype != torch.float32 for p in module.parameters(recurse=False)):
            continue
        hooked += 1
        if type(module) is torch.nn.Embedding:
            module.forward = _embedding_forward(module)
        elif type(module) is torch.nn.Linear and module.weight.shape[0] > BLOCK_ROWS:
            module.forward = _blocked_linear_forward(module)
        else:
            module.register_forward_pre_hook(_swap_in)
            module.register_forward_hook(_swap_out)
    # floating buffers (rope inv_freq) are computed in fp32 by __init__; loading in bf16 must not round them
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                raise ValueError(f"buffer {name} of {type(module).__name__} is {buf.dtype}, not float32")
    return hooked


def logits_batch(model, sequences) -> list:
    """fp32 logits [len(seq), vocab] (numpy) of every token sequence, teacher-forced, in one right-padded
    pass (a position attends only to earlier ones: the padding after a sequence changes none of its logits).
    The caller holds torch.no_grad()."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    ids = torch.zeros((len(sequences), max(len(s) for s in sequences)), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = torch.from_numpy(np.asarray(s, dtype=np.int64))
        mask[i, :len(s)] = 1
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return [logits[i, :len(s)].float().numpy() for i, s in enumerate(sequences)]


def load_fp32_compute(model_dir: Path, threads: int):
    """The checkpoint's model in its stored dtype, computing in fp32 (see the module docstring)."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto", attn_implementation="eager")
    if any(p.dtype not in (torch.float32, torch.float16, torch.bfloat16) for p in model.parameters()):
        raise ValueError(f"{Path(model_dir).name}: parameters of a dtype other than fp32/fp16/bf16")
    upcast_per_module(model)
    model.eval()
    return model
