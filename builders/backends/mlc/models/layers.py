"""Quantization-aware layers (relax nn): a plain or group-quantized Linear / Embedding per MlcQuant.

Parameter names follow MLC: `<layer>.weight` unquantized, `<layer>.q_weight` + `<layer>.q_scale`
group-quantized. Dequantization happens in the graph, so the weights file stays packed.
"""

from __future__ import annotations

import dataclasses

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from builders.backends.mlc.quant import MlcQuant


def _dequantize_te(q_weight: te.Tensor, q_scale: te.Tensor, rows: int | tirx.PrimExpr, k: int, q: MlcQuant):
    """te: packed [rows, words] + scales [rows, groups] (NK) or their transposes (KN) -> [rows, k]."""
    mask = tirx.const((1 << q.bits) - 1, "uint32")

    def value(r, c):
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

    def weight(self) -> nn.Tensor:
        return op.tensor_expr_op(
            lambda w, s: _dequantize_te(w, s, self.out_features, self.in_features, self.q),
            "dequantize", [self.q_weight, self.q_scale])

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        y = _matmul(x, op.permute_dims(self.weight()), self.q.model_dtype)
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
        w = op.tensor_expr_op(lambda a, b: _dequantize_te(a, b, self.vocab, self.dim, self.q),
                              "dequantize", [self.q_weight, self.q_scale])
        return op.matmul(x, op.permute_dims(w), out_dtype="float32")


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
