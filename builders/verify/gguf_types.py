"""Which tensor types a GGUF file really holds, and whether llama.cpp fell back to other types.

llama.cpp quantizes a tensor to a block type only when its row length is a multiple of the block
(256 for K-quants, 32 for Q4_0/Q8_0); otherwise it silently picks another type (Q6_K -> Q8_0,
Q4_K -> Q5_0, Q5_K -> Q5_1, anything -> F16), and the converter does the same for Q8_0. A "Q6_K" file
can hold no Q6_K tensor at all. DESIGNED lists, per quant code, the types llama.cpp's own mix gives
matrices (llama-quant.cpp: output.weight gets Q6_K, some attn_v/ffn_down layers get Q6_K in *_K_M);
a matrix of any other type is a fallback. 1-D tensors (norms, biases) are always F32 and not counted.
"""

from __future__ import annotations

from typing import Iterable

# quant code -> types a 2-D tensor of a file of that code may have by design
DESIGNED: dict[str, frozenset[str]] = {
    "F32": frozenset({"F32"}),
    "F16": frozenset({"F16"}),
    "BF16": frozenset({"BF16"}),
    "Q8_0": frozenset({"Q8_0"}),
    "Q6_K": frozenset({"Q6_K"}),
    "Q5_K_M": frozenset({"Q5_K", "Q6_K"}),
    "Q4_K_M": frozenset({"Q4_K", "Q5_K", "Q6_K"}),
    "Q4_0": frozenset({"Q4_0", "Q6_K"}),
    # QAT: token embeddings and output are asked for Q8_0 explicitly
    "Q4_0-QAT": frozenset({"Q4_0", "Q8_0"}),
    "Q4_K_M-QAT": frozenset({"Q4_K", "Q5_K", "Q6_K", "Q8_0"}),
}


def histogram(tensors: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    """{type: count} over (name, type, n_dims) tuples."""
    out: dict[str, int] = {}
    for _, typ, _ in tensors:
        out[typ] = out.get(typ, 0) + 1
    return dict(sorted(out.items()))


def fallback(quant: str, tensors: Iterable[tuple[str, str, int]]) -> dict | None:
    """None when every matrix has a designed type of `quant`, else the manifest's `quant_fallback`:
    {asked, got: {type: count} of the matrices that fell back, tensors: [names]}."""
    if quant not in DESIGNED:
        raise KeyError(f"no designed tensor types for GGUF quant '{quant}'")
    allowed = DESIGNED[quant]
    off = [(name, typ) for name, typ, n_dims in tensors if n_dims >= 2 and typ not in allowed]
    if not off:
        return None
    got: dict[str, int] = {}
    for _, typ in off:
        got[typ] = got.get(typ, 0) + 1
    return {"asked": quant, "got": dict(sorted(got.items())), "tensors": sorted(n for n, _ in off)}


def warning(fb: dict) -> str:
    got = ", ".join(f"{t} x{n}" for t, n in fb["got"].items())
    return f"quant fallback: asked {fb['asked']}, matrices got {got}"
