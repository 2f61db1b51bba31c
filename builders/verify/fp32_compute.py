"""fp32 math over weights kept at the checkpoint's size: a transformers model whose parameters stay in
the dtype they were stored in (bf16/fp16) and are upcast to float32 for their own module's forward
call only.

The upcast bf16/fp16 -> fp32 is exact, so every module computes with the same fp32 weights a model
loaded with `from_pretrained(dtype=torch.float32)` holds, on fp32 activations: the logits are those of
the fp32 model (tests/test_verify_scale.py checks them bit for bit), while the resident weights take
1x the checkpoint instead of 2x. Peak memory: the checkpoint + the largest single parameter in fp32
(the embedding or LM head matrix) + activations. A float32 checkpoint needs no hooks at all.
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


def upcast_per_module(model) -> int:
    """Hook every module that owns non-fp32 parameters so it computes with fp32 copies of them, made
    before its forward and dropped after. Returns how many modules were hooked."""
    import torch  # noqa: PLC0415

    hooked = 0
    for module in model.modules():
        if any(p.dtype != torch.float32 for p in module.parameters(recurse=False)):
            module.register_forward_pre_hook(_swap_in)
            module.register_forward_hook(_swap_out)
            hooked += 1
    # floating buffers (rope inv_freq) are computed in fp32 by __init__; loading in bf16 must not round them
    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_floating_point() and buf.dtype != torch.float32:
                raise ValueError(f"buffer {name} of {type(module).__name__} is {buf.dtype}, not float32")
    return hooked


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
