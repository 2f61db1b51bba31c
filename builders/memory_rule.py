"""The memory rule every node must keep (issue #8): peak resident memory bounded by the model, not by
copies of it.

    peak RSS <= FACTOR x the model's size in bfloat16 + the node's output (the artifact being written)

At real sizes (0.5B parameters and up) `invoke bench --model` checks exactly that. A node process also
has a start-up footprint that does not depend on the model: Python with torch, transformers and the
image's toolchain imported. Measured with `python -c "import torch, transformers, <toolchain>"` in the
images: gguf (llama_cpp, gguf) 255 MiB, mlc (tvm) 388 MiB, coreml (coremltools) 377 MiB. On the small
real-shape models the tests build (synthetic:qwen2.5-0.5b@layers=2: the real vocabulary and widths, two
layers, ~300 MiB) that floor is as large as the model, so the tests allow FLOOR_MB on top; the bench
reports both.
"""

from __future__ import annotations

FACTOR = 1.5
FLOOR_MB = 400.0


def limit_mb(model_bf16_mb: float, output_mb: float, floor: bool = False) -> float:
    """The largest peak RSS (MiB) the rule allows a node of this model writing this much output."""
    return FACTOR * model_bf16_mb + output_mb + (FLOOR_MB if floor else 0.0)


def check(row: dict, floor: bool = False) -> dict:
    """{"limit_mb", "within"} for a bench row (builders/bench_nodes.node_rows: peak_rss_mb, model_bf16_mb,
    output_mb); within is None where the row has no peak or no model size."""
    peak, model = row.get("peak_rss_mb"), row.get("model_bf16_mb")
    if not peak or not model:
        return {"limit_mb": None, "within": None}
    limit = limit_mb(model, row.get("output_mb") or 0.0, floor)
    return {"limit_mb": round(limit, 1), "within": peak <= limit}
