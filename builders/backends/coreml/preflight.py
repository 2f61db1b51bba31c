"""Preflight before conversion: architecture support, the chunk estimate, and an fp16 range sweep
(every activation of the original model on the reference prompts must stay inside fp16 range)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from builders.backends.coreml import options as opt
from builders.backends.coreml.layout import Layout
from builders.errors import NodeFailed

FP16_MAX = 65504.0
MARGIN = 0.5  # warn when an activation uses more than half of the fp16 range
PAD_WASTE = 1.25  # largest padded / real positions of a sweep batch


def length_groups(token_lists: list, waste: float = PAD_WASTE) -> list[list]:
    """The token lists sorted by length and cut into groups whose padded size (members x longest) stays
    within `waste` x their real positions: each group is one right-padded batch."""
    groups: list[list] = []
    for tokens in sorted(token_lists, key=len):
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * len(tokens) <= waste * (sum(map(len, group)) + len(tokens)):
            group.append(tokens)
        else:
            groups.append([tokens])
    return groups


def _abs_max(t, lengths: list[int]) -> float:
    """max |t| over the real positions of a [batch, length, ...] module output (any other shape: all of
    it), without a copy of the output (aminmax of a view per sequence)."""
    import torch

    views = [t[i, :n] for i, n in enumerate(lengths)] if t.dim() >= 2 and tuple(t.shape[:2]) == (
        len(lengths), max(lengths)) else [t]
    best = 0.0
    for v in (v for v in views if v.numel()):
        lo, hi = torch.aminmax(v)
        best = max(best, -float(lo), float(hi))
    return best


def fp16_sweep(model_dir: Path, token_lists: list) -> dict:
    """Max |activation| per module output of the fp32 original over the given token lists (fp32 math on
    weights kept at the checkpoint's dtype: verify/fp32_compute.py). Lists of similar length run as one
    right-padded batch (length_groups): a position attends only to earlier ones, so a list's activations
    are those of its own pass, and the padded positions are left out of the maxima. Every pass upcasts
    each weight to fp32 once, so fewer passes is most of the speed (the reference prompts: 7 passes -> 2)."""
    import torch

    from builders.verify.fp32_compute import cpu_threads, load_fp32_compute

    model = load_fp32_compute(model_dir, cpu_threads())
    peaks: dict[str, float] = {}
    lengths: list[int] = []  # the current batch's real lengths

    def hook(name):
        def record(_module, _inp, out):
            t = out[0] if isinstance(out, tuple) else out
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
                peaks[name] = max(peaks.get(name, 0.0), _abs_max(t.detach(), lengths))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    with torch.no_grad():
        for group in length_groups([list(map(int, t)) for t in token_lists]):
            ids = torch.zeros((len(group), max(map(len, group))), dtype=torch.int64)
            mask = torch.zeros_like(ids)
            for i, tokens in enumerate(group):
                ids[i, :len(tokens)] = torch.tensor(tokens)
                mask[i, :len(tokens)] = 1
            lengths[:] = [len(t) for t in group]
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    for h in handles:
        h.remove()
    worst = max(peaks, key=peaks.get)
    return {"fp16_max": FP16_MAX, "max_abs": round(peaks[worst], 4), "worst_module": worst,
            "over_half_range": sorted(n for n, v in peaks.items() if v > FP16_MAX * MARGIN),
            "per_module": {n: round(v, 4) for n, v in sorted(peaks.items())}}


def preflight(layout: Layout, model_dir: Path, token_lists: list, arch_supported: tuple) -> dict:
    arch = (layout.config.get("architectures") or ["?"])[0]
    if arch not in arch_supported:
        raise NodeFailed(f"preflight: architecture {arch} is not supported by coreml ({', '.join(arch_supported)})")
    sweep = fp16_sweep(model_dir, token_lists)
    report = {"arch": arch, "fp16_sweep": sweep, "chunks": layout.chunks,
              "chunk_layers": [[r.start, r.stop] for r in layout.layers],
              "chunk_mb_estimate": round(opt.chunk_mb(layout.config, layout.lut("lut2"), layout.chunks,
                                                                layout.context), 3)}
    if sweep["max_abs"] > FP16_MAX:
        raise NodeFailed(f"preflight: activation {sweep['worst_module']} reaches {sweep['max_abs']:.4g}, outside the "
                         f"fp16 range ({FP16_MAX}); this model cannot run in fp16 on the Neural Engine")
    if not np.isfinite(sweep["max_abs"]):
        raise NodeFailed(f"preflight: activation {sweep['worst_module']} is not finite in fp32")
    return report
