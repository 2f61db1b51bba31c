"""MLC quantization codes as data, and the numpy group quantizer that writes MLC's layout.

Group quantization (MLC's `group-quant`): each group of `group_size` consecutive input-dim values of
a weight row gets one scale `max|w| / max_int` (stored in the model dtype); values become
`clip(round(w / scale) + max_int, 0, 2 * max_int)` packed little-end first into uint32 words
(`32 // bits` values per word). Dequantized: `(q - max_int) * scale`.
Layout `NK` (the `_1` codes) keeps HF's [out, in] orientation: q_weight [out, in/epw], q_scale
[out, groups]; layout `KN` (the `_0` codes) stores both transposed: [in/epw, out], [groups, out].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where arrays are made, not here: the planner imports this table, and a no-op build
# should not pay numpy's import
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class MlcQuant:
    code: str
    model_dtype: str  # activations and unquantized params ("float16" / "float32")
    bits: int = 0  # 0: no quantization
    group_size: int = 0
    layout: str = "NK"  # "NK" (_1 codes) or "KN" (_0 codes)
    legacy: bool = False  # a code of the old MLC flow, kept for old pipelines

    @property
    def kind(self) -> str:
        return "group-quant" if self.bits else "no-quant"

    @property
    def per_word(self) -> int:
        """Quantized values per uint32 storage word."""
        return 32 // self.bits

    @property
    def max_int(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def groups(self, k: int) -> int:
        return -(-k // self.group_size)

    def words(self, k: int) -> int:
        return self.groups(k) * (self.group_size // self.per_word)

    def bits_per_param(self) -> float:
        if not self.bits:
            return 8.0 * DTYPE_BYTES[self.model_dtype]
        return self.bits + 8.0 * DTYPE_BYTES[self.model_dtype] / self.group_size


QUANTS: dict[str, MlcQuant] = {q.code: q for q in [
    MlcQuant("q0f32", "float32"),
    MlcQuant("q0f16", "float16"),
    MlcQuant("q4f16_1", "float16", 4, 32, "NK"),
    MlcQuant("q4f32_1", "float32", 4, 32, "NK"),
    MlcQuant("q3f16_1", "float16", 3, 40, "NK"),
    # legacy codes that MLC's current flow still defines (same math, transposed "KN" storage)
    MlcQuant("q4f16_0", "float16", 4, 32, "KN", legacy=True),
    MlcQuant("q3f16_0", "float16", 3, 40, "KN", legacy=True),
]}

# legacy codes with no equivalent in MLC's current flow: refused, naming the code to use instead
REFUSED_LEGACY: dict[str, str] = {
    "q4f32_0": "q4f32_1",
    "q8f16_0": "q0f16",
}


def describe(code: str) -> str:
    q = QUANTS[code]
    if not q.bits:
        return f"no quantization, {q.model_dtype}"
    return (f"{q.bits}-bit symmetric group quant, group {q.group_size}, {q.model_dtype} scales, "
            f"{q.layout} layout{' (legacy)' if q.legacy else ''}")


# ---- numpy quantizer (run side; numpy only) ---------------------------------------------------------

ROW_BLOCK = 4096  # rows quantized at a time: the temporaries are a few blocks, not a few copies of the matrix


def quantize(w: np.ndarray, q: MlcQuant) -> tuple[np.ndarray, np.ndarray]:
    """w [N, K] (HF layout) -> (q_weight uint32, q_scale model dtype) in q's layout. Rows are independent
    (groups run along K), so a vocabulary-sized matrix is quantized ROW_BLOCK rows at a time."""
    return quantize_blocks((w[i:i + ROW_BLOCK] for i in range(0, w.shape[0], ROW_BLOCK)), q)


def quantize_blocks(blocks: Iterable[np.ndarray], q: MlcQuant) -> tuple[np.ndarray, np.ndarray]:
    """quantize() of the matrix made of these consecutive row blocks, taking one block at a time (a
    caller that reads the blocks lazily never holds the float32 matrix)."""
    import numpy as np  # noqa: PLC0415

    parts = [_quantize_rows(b, q) for b in blocks]
    packed = np.concatenate([p for p, _ in parts]) if len(parts) > 1 else parts[0][0]
    scale = np.concatenate([s for _, s in parts]) if len(parts) > 1 else parts[0][1]
    if q.layout == "KN":
        return np.ascontiguousarray(packed.T), np.ascontiguousarray(scale.T)
    return packed, scale


def _quantize_rows(w: np.ndarray, q: MlcQuant) -> tuple[np.ndarray, np.ndarray]:
    """quantize() of some rows, in NK layout."""
    import numpy as np  # noqa: PLC0415

    n, k = w.shape
    w = w.astype(q.model_dtype).astype(np.float32)  # MLC quantizes the weight cast to the model dtype
    kp = q.groups(k) * q.group_size
    wp = np.zeros((n, kp), np.float32)
    wp[:, :k] = w
    grouped = wp.reshape(n, -1, q.group_size)
    scale = (np.abs(grouped).max(axis=-1) / q.max_int).astype(q.model_dtype)  # [N, G]
    s32 = scale.astype(np.float32)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = np.where(s32 > 0, np.round(grouped / np.where(s32 > 0, s32, 1)) + q.max_int, q.max_int)
    levels = np.clip(levels, 0, 2 * q.max_int).astype(np.uint32).reshape(n, -1, q.per_word)
    words_per_group = q.group_size // q.per_word
    levels = levels[:, :, :].reshape(n, q.groups(k), words_per_group, q.per_word)
    shifts = (np.arange(q.per_word, dtype=np.uint32) * q.bits)
    packed = np.bitwise_or.reduce(levels << shifts, axis=-1).reshape(n, -1).astype(np.uint32)
    return packed, scale


def dequantize(q_weight: np.ndarray, q_scale: np.ndarray, k: int, q: MlcQuant) -> np.ndarray:
    """Inverse of quantize(): float32 [N, K] in HF layout."""
    import numpy as np  # noqa: PLC0415

    if q.layout == "KN":
        q_weight, q_scale = q_weight.T, q_scale.T
    n = q_weight.shape[0]
    if 8 % q.bits == 0 and q.group_size % (8 // q.bits) == 0:
        # whole values per byte (4-bit: two): one table lookup per packed byte gives its centred levels
        # (little-endian words: byte i holds values 8i/bits.., low bits first), then one multiply by the scales
        levels = _byte_levels(q)[np.ascontiguousarray(q_weight).view(np.uint8)]  # [N, words*4, 8/bits]
        levels = levels.reshape(n, -1, q.group_size)
        levels *= q_scale.astype(np.float32)[:, : levels.shape[1], None]
        return levels.reshape(n, -1)[:, :k]
    shifts = (np.arange(q.per_word, dtype=np.uint32) * q.bits)
    levels = (q_weight[..., None] >> shifts) & np.uint32((1 << q.bits) - 1)
    levels = levels.reshape(n, -1).astype(np.float32)
    scale = np.repeat(q_scale.astype(np.float32), q.group_size, axis=1)
    return ((levels - q.max_int) * scale)[:, :k]


def _byte_levels(q: MlcQuant) -> np.ndarray:
    """[256, 8 / bits] float32: the centred levels (value - max_int) a packed byte holds, low bits first."""
    import numpy as np  # noqa: PLC0415

    per_byte = 8 // q.bits
    b = np.arange(256, dtype=np.uint32)[:, None]
    return (((b >> (np.arange(per_byte, dtype=np.uint32) * q.bits)) & ((1 << q.bits) - 1)).astype(np.int32)
            - q.max_int).astype(np.float32)


def error_bound(w: np.ndarray, q: MlcQuant) -> np.ndarray:
    """Per-element bound on |dequantize(quantize(w)) - w| implied by bits and group size:
    half a quantization step of the element's group (scale / 2), plus the rounding of the scale to
    the model dtype (relative eps * max_int steps) and of w itself to the model dtype."""
    import numpy as np  # noqa: PLC0415

    n, k = w.shape
    kp = q.groups(k) * q.group_size
    wp = np.zeros((n, kp), np.float32)
    wp[:, :k] = w.astype(np.float32)
    amax = np.abs(wp.reshape(n, -1, q.group_size)).max(axis=-1)
    eps = float(np.finfo(q.model_dtype).eps)
    step = amax / q.max_int
    per_group = step * 0.5 + amax * eps * 2 + step * 1e-6
    return np.repeat(per_group, q.group_size, axis=1)[:, :k]
