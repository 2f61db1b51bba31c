"""coreml backend: the conversion reads the checkpoint tensor by tensor (builders/backends/coreml/weights.py)
instead of loading and cloning the whole fp32 model in every step (issue 8): the same tensors and rope
tables as transformers, for a sharded checkpoint, tied embeddings and llama3 rope scaling."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")

from builders.backends.coreml import convert  # noqa: E402
from builders.backends.coreml.weights import Weights  # noqa: E402
from builders.errors import NodeFailed  # noqa: E402


def _save(tmp_path, name, cfg, cls, **kwargs):
    torch.manual_seed(0)
    model = cls(cfg)
    model.save_pretrained(tmp_path / name, **kwargs)
    return tmp_path / name, cls.from_pretrained(tmp_path / name, dtype=torch.float32)


def test_sharded_llama_with_rope_scaling_reads_the_same_tensors_and_rope(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=64)
    cfg = LlamaConfig(**dims, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    d, model = _save(tmp_path, "llama", cfg, LlamaForCausalLM, max_shard_size="40KB")
    assert (d / "model.safetensors.index.json").is_file() and len(list(d.glob("*.safetensors"))) > 1
    src = convert.Source(d, 32)
    sd = model.state_dict()
    assert sorted(src.state) == sorted(sd) and not src.state.tied
    assert all(src.state[k].dtype == torch.float16 and torch.equal(src.state[k], v.half()) for k, v in sd.items())
    exact = Weights(d)  # no dtype: the checkpoint's own tensors, read a block at a time
    assert all(torch.equal(exact[k], v) for k, v in sd.items())
    assert set(src.layer(1)) == {k[len("model.layers.1."):] for k in sd if k.startswith("model.layers.1.")}
    with torch.no_grad():
        cos, sin = model.model.rotary_emb(torch.zeros(1, 32), torch.arange(32).unsqueeze(0))
    assert torch.equal(src.rope[0], cos[0]) and torch.equal(src.rope[1], sin[0])
    assert not torch.allclose(src.rope[0], convert.rope_tables(LlamaConfig(**dims), 32)[0]), "scaling is applied"


def test_tied_qwen2_answers_the_lm_head_with_the_embedding_table(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    d, model = _save(tmp_path, "qwen2", cfg, Qwen2ForCausalLM)
    w = Weights(d)
    assert w.tied and "lm_head.weight" in w and len(w) == len(model.state_dict())
    assert torch.equal(w["lm_head.weight"], model.lm_head.weight) and torch.equal(w["lm_head.weight"], w["model.embed_tokens.weight"])
    with pytest.raises(KeyError):
        w["model.layers.5.mlp.up_proj.weight"]
    (d / "model.safetensors").unlink()
    with pytest.raises(NodeFailed, match="qwen2: no \\*.safetensors files"):
        Weights(d)


def test_phi3_fused_projections_are_split_and_the_programs_match_transformers(tmp_path):
    """Phi-3 stores q/k/v and gate/up fused: Weights.layer splits them by rows into the projections the
    parts read, and the converted programs (numpy interpreter) compute transformers' Phi-3 logits."""
    from transformers import Phi3Config, Phi3ForCausalLM

    from coreml_parts import fp16_parts_vs_model

    cfg = Phi3Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=128, original_max_position_embeddings=128,
                     tie_word_embeddings=False, pad_token_id=None, bos_token_id=1, eos_token_id=2)
    d, model = _save(tmp_path, "phi3", cfg, Phi3ForCausalLM)
    with torch.no_grad():  # larger weights than the init so the logits are far from flat
        for p in model.parameters():
            p.mul_(4.0)
    model.save_pretrained(d)
    layer = Weights(d).layer(1)
    fused = model.model.layers[1]
    q, k, v = fused.self_attn.qkv_proj.weight.split([64, 32, 32])
    gate, up = fused.mlp.gate_up_proj.weight.split([128, 128])
    want = {"self_attn.q_proj.weight": q, "self_attn.k_proj.weight": k, "self_attn.v_proj.weight": v,
            "mlp.gate_proj.weight": gate, "mlp.up_proj.weight": up}
    assert {n for n in layer if "proj" in n} == {*want, "self_attn.o_proj.weight", "mlp.down_proj.weight"}
    assert all(torch.equal(layer[n], t) for n, t in want.items())

    figures = fp16_parts_vs_model(model, d, tmp_path / "out", "p", context=32, batch=8)
    assert figures["rel_l2"] < 1e-2 and figures["top1"] >= 0.9, figures


def test_a_fused_tensor_of_the_wrong_size_is_a_node_failure(tmp_path):
    from transformers import Phi3Config, Phi3ForCausalLM

    cfg = Phi3Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2, original_max_position_embeddings=128, pad_token_id=None)
    d, _ = _save(tmp_path, "phi3", cfg, Phi3ForCausalLM)
    import json

    bad = json.loads((d / "config.json").read_text())
    bad["num_key_value_heads"] = 4  # the config now implies 192 qkv rows, the checkpoint has 128
    (d / "config.json").write_text(json.dumps(bad))
    with pytest.raises(NodeFailed, match="qkv_proj.weight: 128 rows, the config implies 192"):
        Weights(d).layer(0)


def test_reads_span_many_blocks_and_a_damaged_file_is_a_node_failure(tmp_path, monkeypatch):
    """Tensors read in blocks (READ_BLOCK made tiny: every tensor crosses many block edges) equal the
    checkpoint's; bf16 read as fp16 equals torch's own conversion; a cut file is a one-line error."""
    from safetensors.torch import save_file

    from builders.backends.coreml import weights

    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, '
                                   '"intermediate_size": 16, '
                                   '"num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1, '
                                   '"vocab_size": 10}')
    g = torch.Generator().manual_seed(0)
    tensors = {"model.embed_tokens.weight": torch.randn(10, 8, generator=g).to(torch.bfloat16),
               "model.norm.weight": torch.randn(8, generator=g), "empty": torch.zeros(0, 4)}
    save_file(tensors, str(d / "model.safetensors"))
    monkeypatch.setattr(weights, "READ_BLOCK", 6)
    w16, raw = Weights(d, torch.float16), Weights(d)
    for k, v in tensors.items():
        assert torch.equal(raw[k], v) and raw[k].dtype == v.dtype, k
        assert torch.equal(w16[k], v.to(torch.float16)) and w16[k].dtype == torch.float16, k
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    cut = Weights(d)
    with pytest.raises(NodeFailed, match="model.safetensors: tensor .* is cut short; the file is damaged"):
        [cut[k] for k in tensors]  # the last tensor of the file lost its last bytes
