"""Quantization-aware layers (relax nn): a plain or group-quantized Linear / Embedding per MlcQuant.

Parameter names follow MLC: `<layer>.weight` unquantized, `<layer>.q_weight` + `<layer>.q_scale`
group-quantized. Dequantization happens in the graph, so the weights file stays packed. A quantized
matrix with a vocabulary's rows (the LM head) is dequantized and multiplied in row blocks whose outputs
are concatenated (models/dequant_blocks.py): the library's working memory holds one float16 block of the
weight, never the whole dequantized table.
"""

from __future__ import annotations

import dataclasses

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from builders.backends.mlc.models.dequant_blocks import row_blocks
from builders.backends.mlc.quant import MlcQuant


def _dequantize_te(q_weight: te.Tensor, q_scale: te.Tensor, rows: int | tirx.PrimExpr, k: int, q: MlcQuant,
                   start: int = 0):
    """te: packed [rows, words] + scales [rows, groups] (NK) or their transposes (KN) -> [rows, k]; with
    `start`, rows start .. start + rows of the packed matrix."""
    mask = tirx.const((1 << q.bits) - 1, "uint32")

    def value(r, c):
        r = r + start if start else r
        if q.layout == "KN":
            word, scale = q_weight[c // q.per_word, r], q_scale[c // q.group_size, r]
        else:
            word, scale = q_weight[r, c // q.per_word], q_scale[r, c // q.group_size]
        shift = ((c % q.per_word) * q.bits).astype("uint32")
        level = tirx.bitwise_and(tirx.shift_right(word, shift), mask)
        # computed in float32 and rounded once: (level - max_int) * scale is exact in float32 (a few bits
        # times an 11-bit significand), so the float16 result is bit-identical to float16 arithmetic,
        # without a float16 round trip per operation on CPUs that have no float16 ALU
        value = (level.astype("int32") - q.max_int).astype("float32") * scale.astype("float32")
        return value.astype(q.model_dtype)

    return te.compute((rows, k), value, name="dequantize")


def _matmul(x: nn.Tensor, w: nn.Tensor, dtype: str) -> nn.Tensor:
    """x @ w accumulated in float32 (then cast back to the model dtype)."""
    if dtype == "float32":
        return op.matmul(x, w)
    return op.matmul(x, w, out_dtype="float32").astype(dtype)


def _quant_matmul(x: nn.Tensor, q_weight: nn.Tensor, q_scale: nn.Tensor, rows: int, k: int, q: MlcQuant,
                  out_dtype: str | None) -> nn.Tensor:
    """x @ dequantize(q_weight, q_scale).T in row_blocks(rows) (`out_dtype` None: _matmul's float32
    accumulation cast back to the model dtype; "float32": float32 out, as the LM head)."""
    parts = []
    for start, size in row_blocks(rows):
        w = op.tensor_expr_op(lambda a, b, start=start, size=size: _dequantize_te(a, b, size, k, q, start),
                              "dequantize", [q_weight, q_scale])
        wt = op.permute_dims(w)
        parts.append(_matmul(x, wt, q.model_dtype) if out_dtype is None else op.matmul(x, wt, out_dtype=out_dtype))
    return parts[0] if len(parts) == 1 else op.concat(parts, dim=-1)


class QuantLinear(nn.Module):
    """y = x @ dequantize(q_weight, q_scale).T (+ bias)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, q: MlcQuant):
        self.in_features, self.out_features, self.q = in_features, out_features, q
        words, groups = q.words(in_features), q.groups(in_features)
        if q.layout == "KN":
            self.q_weight = nn.Parameter((words, out_features), "uint32")
            self.q_scale = nn.Parameter((groups, out_features), q.model_dtype)
        else:
            self.q_weight = nn.Parameter((out_features, words), "uint32")
            self.q_scale = nn.Parameter((out_features, groups), q.model_dtype)
        self.bias = nn.Parameter((out_features,), q.model_dtype) if bias else None

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        y = _quant_matmul(x, self.q_weight, self.q_scale, self.out_features, self.in_features, self.q, None)
        return y + self.bias if self.bias is not None else y


class QuantEmbedding(nn.Module):
    """Rows of a group-quantized table (always NK: one row per token), dequantized after the take."""

    def __init__(self, vocab: int, dim: int, q: MlcQuant):
        self.vocab, self.dim, self.q = vocab, dim, dataclasses.replace(q, layout="NK")
        self.q_weight = nn.Parameter((vocab, self.q.words(dim)), "uint32")
        self.q_scale = nn.Parameter((vocab, self.q.groups(dim)), q.model_dtype)

    def forward(self, ids: nn.Tensor) -> nn.Tensor:
        w = op.take(self.q_weight, ids, axis=0)
        s = op.take(self.q_scale, ids, axis=0)
        n = ids.shape[0]
        return op.tensor_expr_op(lambda a, b: _dequantize_te(a, b, n, self.dim, self.q), "dequantize", [w, s])

    def lm_head_forward(self, x: nn.Tensor) -> nn.Tensor:
        return _quant_matmul(x, self.q_weight, self.q_scale, self.vocab, self.dim, self.q, "float32")


class PlainLinear(nn.Module):
    """nn.Linear with float32 accumulation."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: str):
        self.dtype = dtype
        self.weight = nn.Parameter((out_features, in_features), dtype)
        self.bias = nn.Parameter((out_features,), dtype) if bias else None

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        y = _matmul(x, op.permute_dims(self.weight), self.dtype)
        return y + self.bias if self.bias is not None else y


class PlainEmbedding(nn.Embedding):
    def lm_head_forward(self, x: nn.Tensor) -> nn.Tensor:
        return op.matmul(x, op.permute_dims(self.weight), out_dtype="float32")


def linear(in_features: int, out_features: int, bias: bool, q: MlcQuant) -> nn.Module:
    if q.bits:
        return QuantLinear(in_features, out_features, bias, q)
    return PlainLinear(in_features, out_features, bias, q.model_dtype)


def embedding(vocab: int, dim: int, q: MlcQuant) -> nn.Module:
    if q.bits:
        return QuantEmbedding(vocab, dim, q)
    return PlainEmbedding(vocab, dim, dtype=q.model_dtype)
