"""Torch modules for the Core ML parts, laid out for the Neural Engine the way ANEMLL does it:
1x1 convolutions (with the checkpoint's biases, e.g. Qwen2 q/k/v) instead of linear layers ([1, C, 1, S] activations), RMSNorm through layer_norm of
[x, -x] (mean zero, so layer_norm divides by the RMS), fp16 weights, one KV cache state per chunk
([2 * layers, kv_heads, context, head_dim]) updated in place at `current_pos`.

Interfaces (S = 1 for `infer`, S = batch for `prefill`):
  embeddings  input_ids int32 [1, S]                                    -> hidden_states fp16 [1, S, H]
  chunk       hidden_states [1, S, H], position_ids int32 [S],
              causal_mask fp16 [1, 1, S, context], current_pos int32 [1]  -> hidden_states [1, S, H]
              state kv_cache; the last chunk applies the final norm
  lm_head     hidden_states [1, 1, H] -> logits1..N fp16 [1, 1, rows_i]  (argmax: argmax_idx, argmax_val [N])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

DTYPE = torch.float16


def _weight_dtype(x, weight: torch.Tensor):
    """x cast to the weight's dtype before every op that takes a weight. coremltools' torch frontend
    converts in fp32 (it casts the fp16 inputs and states to fp32) and promotes an fp16 weight met by an
    fp32 activation to a new fp32 copy, which its fp16 pass casts back to another fp16 copy: three copies
    of every weight alive at once (the module's fp16, fp32, the final fp16), 4x the model's fp16 size at
    the peak of a conversion. With the activation cast to fp16 the op takes the module's own fp16 tensor
    as its constant (no copy at all); the fp16 pass would have made the op fp16 anyway, so the saved
    program is the same (tests/test_coreml_programs.py)."""
    return x.to(weight.dtype)


class AneRMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight.to(DTYPE), requires_grad=False)
        self.eps = eps

    def forward(self, x):  # x [..., H]
        h = x.shape[-1]
        x = _weight_dtype(x, self.weight)
        doubled = torch.cat([x, -x], dim=-1)
        normed = F.layer_norm(doubled, (2 * h,), eps=self.eps)
        return normed[..., :h] * self.weight


def _conv(weight: torch.Tensor) -> nn.Conv2d:
    out_ch, in_ch = weight.shape
    conv = nn.Conv2d(in_ch, out_ch, 1, bias=False, dtype=DTYPE, device="meta")  # no random init: replaced below
    conv.weight = nn.Parameter(weight.to(DTYPE).reshape(out_ch, in_ch, 1, 1), requires_grad=False)
    return conv


class Proj(nn.Module):
    """1x1 convolution, plus the checkpoint's bias as a separate add (coremltools' torch frontend
    rejects an fp16 conv bias next to the weight it promotes)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.conv = _conv(weight)
        self.bias = None if bias is None else nn.Parameter(bias.to(DTYPE).reshape(1, -1, 1, 1), requires_grad=False)

    def forward(self, x):
        y = self.conv(_weight_dtype(x, self.conv.weight))
        return y if self.bias is None else y + self.bias


def _to_conv_layout(x):  # [1, S, C] -> [1, C, 1, S]
    return x.permute(0, 2, 1).unsqueeze(2)


def _from_conv_layout(x):  # [1, C, 1, S] -> [1, S, C]
    return x.squeeze(2).permute(0, 2, 1)


def _pad_rows(weight: torch.Tensor, pad: int) -> torch.Tensor:
    """`pad` zero rows below the weight (so that its row count is a multiple of a LUT group)."""
    return torch.cat([weight, weight.new_zeros(pad, weight.shape[1])]) if pad else weight


class Embeddings(nn.Module):
    """The embedding table; `pad` zero rows below it (never gathered: token ids stay below the vocab) make
    it palettizable when the vocab is not a multiple of the LUT group."""

    def __init__(self, weight: torch.Tensor, pad: int = 0):
        super().__init__()
        weight = _pad_rows(weight, pad)
        self.embed_tokens = nn.Embedding(*weight.shape, dtype=DTYPE, device="meta")  # no random init: replaced below
        self.embed_tokens.weight = nn.Parameter(weight.to(DTYPE), requires_grad=False)

    def forward(self, input_ids):
        return self.embed_tokens(input_ids)


class LmHead(nn.Module):
    """Vocabulary split into convolutions of `sizes` rows (ANE dimension limit; options.lm_head_split_sizes);
    optional in-model argmax per split (the host picks the split with the largest value). A part whose
    rows are not a multiple of `group` (the LUT group) gets zero rows up to one, and its output is sliced
    back to the real rows inside the program (padded rows never reach the logits or the argmax)."""

    def __init__(self, weight: torch.Tensor, sizes: list[int], argmax: bool, group: int = 1):
        super().__init__()
        if sum(sizes) != weight.shape[0]:
            raise ValueError(f"LM head split {sizes} does not cover the {weight.shape[0]} vocabulary rows")
        self.sizes = list(sizes)
        self.heads = nn.ModuleList(_conv(_pad_rows(w, -len(w) % group)) for w in torch.split(weight, self.sizes, dim=0))
        self.argmax = argmax

    def forward(self, hidden_states):
        x = _to_conv_layout(_weight_dtype(hidden_states, self.heads[0].weight))
        logits = []
        for head, rows in zip(self.heads, self.sizes):
            out = _from_conv_layout(head(x))
            logits.append(out if out.shape[-1] == rows else out[..., :rows])
        if not self.argmax:
            return tuple(logits)
        vals, idxs = zip(*(torch.max(lg.reshape(-1), dim=0) for lg in logits))
        return torch.stack(idxs).to(torch.int32), torch.stack(vals)


class DecoderLayer(nn.Module):
    def __init__(self, weights: dict, cfg: dict):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = cfg["heads"], cfg["kv_heads"], cfg["head_dim"]
        self.input_norm = AneRMSNorm(weights["input_layernorm.weight"], cfg["eps"])
        self.post_norm = AneRMSNorm(weights["post_attention_layernorm.weight"], cfg["eps"])
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self, name, Proj(weights[f"self_attn.{name}.weight"], weights.get(f"self_attn.{name}.bias")))
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(self, name, Proj(weights[f"mlp.{name}.weight"], weights.get(f"mlp.{name}.bias")))
        self.scale = self.head_dim ** -0.5

    def _heads(self, x, n):  # [1, n*hd, 1, S] -> [1, n, S, hd]
        s = x.shape[-1]
        return x.reshape(1, n, self.head_dim, s).permute(0, 1, 3, 2)

    @staticmethod
    def _rope(x, cos, sin):  # x [1, n, S, hd], cos/sin [1, 1, S, hd]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def forward(self, x, cos, sin, mask, current_pos, kv_cache, index: int):
        s = x.shape[1]
        h = _to_conv_layout(self.input_norm(x))
        q = self._rope(self._heads(self.q_proj(h), self.heads), cos, sin)
        k = self._rope(self._heads(self.k_proj(h), self.kv_heads), cos, sin)
        v = self._heads(self.v_proj(h), self.kv_heads)
        kv_cache[2 * index:2 * index + 1, :, current_pos:current_pos + s, :] = k
        kv_cache[2 * index + 1:2 * index + 2, :, current_pos:current_pos + s, :] = v
        keys = kv_cache[2 * index].repeat_interleave(self.heads // self.kv_heads, dim=0).unsqueeze(0)
        values = kv_cache[2 * index + 1].repeat_interleave(self.heads // self.kv_heads, dim=0).unsqueeze(0)
        scores = torch.matmul(q * self.scale, keys.transpose(-1, -2)) + mask
        attn = torch.matmul(torch.softmax(scores, dim=-1), values)  # [1, heads, S, hd]
        attn = attn.permute(0, 1, 3, 2).reshape(1, self.heads * self.head_dim, 1, s)
        x = x + _from_conv_layout(self.o_proj(attn))
        h = _to_conv_layout(self.post_norm(x))
        mlp = self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        return x + _from_conv_layout(mlp)


class Chunk(nn.Module):
    """Decoder layers [first, last) with their own KV cache state; the last chunk applies the final norm."""

    def __init__(self, layers: list[dict], cfg: dict, rope: tuple[torch.Tensor, torch.Tensor],
                 final_norm: torch.Tensor | None):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(w, cfg) for w in layers)
        self.register_buffer("rope_cos", rope[0].to(DTYPE), persistent=False)
        self.register_buffer("rope_sin", rope[1].to(DTYPE), persistent=False)
        self.norm = AneRMSNorm(final_norm, cfg["eps"]) if final_norm is not None else None
        shape = (2 * len(layers), cfg["kv_heads"], cfg["context"], cfg["head_dim"])
        self.register_buffer("kv_cache", torch.zeros(shape, dtype=DTYPE))

    def forward(self, hidden_states, position_ids, causal_mask, current_pos):
        cos = self.rope_cos[position_ids].unsqueeze(0).unsqueeze(0)
        sin = self.rope_sin[position_ids].unsqueeze(0).unsqueeze(0)
        x = hidden_states
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, causal_mask, current_pos, self.kv_cache, i)
        return self.norm(x) if self.norm is not None else x
