"""Llama-family decoder as a relax nn.Module with MLC's model-library entry points.

Fused `qkv_proj` / `gate_up_proj` (MLC's parameter names), RoPE (incl. Llama-3 scaling) and
attention inside TVM's paged KV cache (`TIRPagedKVCache`). Qwen2 and Mistral reuse this module with
their feature flags (qkv bias, tied embeddings, sliding window) from ModelConfig.
"""

from __future__ import annotations

from tvm import relax as rx
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

from builders.backends.mlc.models import ModelConfig
from builders.backends.mlc.models.layers import embedding, linear
from builders.backends.mlc.quant import MlcQuant


class Attention(nn.Module):
    def __init__(self, c: ModelConfig, q: MlcQuant):
        self.d, self.hq, self.hkv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        self.qkv_proj = linear(c.hidden_size, (self.hq + 2 * self.hkv) * self.d, c.qkv_bias, q)
        self.o_proj = linear(self.hq * self.d, c.hidden_size, False, q)

    def forward(self, x: nn.Tensor, kv: PagedKVCache, layer_id: int) -> nn.Tensor:
        b, s, _ = x.shape
        qkv = op.reshape(self.qkv_proj(x), (b, s, self.hq + 2 * self.hkv, self.d))
        out = kv.attention_with_fused_qkv(layer_id, qkv, self.hq, sm_scale=self.d**-0.5)
        return self.o_proj(op.reshape(out, (b, s, self.hq * self.d)))


class MLP(nn.Module):
    def __init__(self, c: ModelConfig, q: MlcQuant):
        self.gate_up_proj = linear(c.hidden_size, 2 * c.intermediate_size, False, q)
        self.down_proj = linear(c.intermediate_size, c.hidden_size, False, q)

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig, q: MlcQuant):
        self.input_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False, dtype=q.model_dtype)
        self.self_attn = Attention(c, q)
        self.post_attention_layernorm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False,
                                                   dtype=q.model_dtype)
        self.mlp = MLP(c, q)

    def forward(self, x: nn.Tensor, kv: PagedKVCache, layer_id: int) -> nn.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), kv, layer_id)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    def __init__(self, c: ModelConfig, q: MlcQuant):
        self.embed_tokens = embedding(c.vocab_size, c.hidden_size, q)
        self.layers = nn.ModuleList([DecoderLayer(c, q) for _ in range(c.num_hidden_layers)])
        self.norm = nn.RMSNorm(c.hidden_size, -1, c.rms_norm_eps, bias=False, dtype=q.model_dtype)

    def forward(self, x: nn.Tensor, kv: PagedKVCache) -> nn.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, kv, i)
        return self.norm(x)


class CausalLM(nn.Module):
    """The model library's functions (names and signatures as MLC's runtimes call them)."""

    def __init__(self, c: ModelConfig, q: MlcQuant, target=None):
        self.config, self.quant, self.target = c, q, target
        self.dtype = q.model_dtype
        self.model = Body(c, q)
        if not c.tie_word_embeddings:
            self.lm_head = linear(c.hidden_size, c.vocab_size, False, q)

    def get_logits(self, h: nn.Tensor) -> nn.Tensor:
        if self.config.tie_word_embeddings:
            logits = self.model.embed_tokens.lm_head_forward(h)
        else:
            logits = self.lm_head(h)
        return logits.astype("float32") if logits.dtype != "float32" else logits

    def embed(self, input_ids: nn.Tensor) -> nn.Tensor:
        return self.model.embed_tokens(input_ids)

    def prefill(self, input_embed: nn.Tensor, paged_kv_cache: PagedKVCache):
        def last(x: te.Tensor):
            b, s, d = x.shape
            return te.compute((b, 1, d), lambda i, _, k: x[i, s - 1, k], name="index")

        h = self.model(input_embed, paged_kv_cache)
        h = op.tensor_expr_op(last, name_hint="index", args=[h])
        return self.get_logits(h), paged_kv_cache

    def decode(self, input_embed: nn.Tensor, paged_kv_cache: PagedKVCache):
        return self.get_logits(self.model(input_embed, paged_kv_cache)), paged_kv_cache

    def batch_prefill(self, input_embeds: nn.Tensor, logit_positions: nn.Tensor, paged_kv_cache: PagedKVCache):
        h = op.take(self.model(input_embeds, paged_kv_cache), logit_positions, axis=1)
        return self.get_logits(h), paged_kv_cache

    def batch_decode(self, input_embeds: nn.Tensor, paged_kv_cache: PagedKVCache):
        return self.get_logits(self.model(input_embeds, paged_kv_cache)), paged_kv_cache

    def batch_verify(self, input_embeds: nn.Tensor, paged_kv_cache: PagedKVCache):
        return self.get_logits(self.model(input_embeds, paged_kv_cache)), paged_kv_cache

    def create_tir_paged_kv_cache(self, max_batch_size: tirx.Var, max_total_seq_len: tirx.Var,
                                  prefill_chunk_size: tirx.Var, page_size: tirx.Var,
                                  support_sliding_window: tirx.Var) -> PagedKVCache:
        c = self.config
        return TIRPagedKVCache(
            attn_kind="mha", max_batch_size=max_batch_size, max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size, page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=rx.ShapeExpr([0, c.num_hidden_layers]),
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, qk_head_dim=c.head_dim, v_head_dim=c.head_dim,
            mla_original_qk_head_dim=0, mla_original_v_head_dim=0,
            rope_mode=RopeMode.NORMAL, rope_scale=1, rope_theta=c.position_embedding_base,
            rope_scaling=dict(c.rope_scaling), rope_ext_factors=rx.prim_value(0), rotary_dim=c.head_dim,
            enable_disaggregation=False, dtype=self.dtype, target=self.target,
        )

    def get_default_spec(self) -> nn.spec.ModuleSpec:
        h, dt = self.config.hidden_size, self.dtype
        packed = {"param_mode": "packed", "effect_mode": "none"}
        kv = nn.spec.Object(object_type=PagedKVCache)
        ints = ("max_batch_size", "max_total_seq_len", "prefill_chunk_size", "page_size", "support_sliding_window")
        spec = {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", h], dt), "paged_kv_cache": kv, "$": packed},
            "decode": {"input_embed": nn.spec.Tensor([1, 1, h], dt), "paged_kv_cache": kv, "$": packed},
            "batch_prefill": {"input_embeds": nn.spec.Tensor([1, "seq_len", h], dt),
                              "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                              "paged_kv_cache": kv, "$": packed},
            "batch_decode": {"input_embeds": nn.spec.Tensor(["batch_size", 1, h], dt),
                             "paged_kv_cache": kv, "$": packed},
            "batch_verify": {"input_embeds": nn.spec.Tensor([1, "seq_len", h], dt),
                             "paged_kv_cache": kv, "$": packed},
            "create_tir_paged_kv_cache": {**{k: int for k in ints},
                                          "$": {"param_mode": "none", "effect_mode": "none"}},
        }
        return nn.spec.ModuleSpec.from_raw(spec, self)
