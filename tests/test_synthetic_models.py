"""`synthetic:<config>` model sources, plan side and the streamed weight writer (no Docker): names and
overrides, the embedded upstream configs against the published figures, the plan digest, and the
safetensors file written block by block read back by the safetensors library."""

import json
import math

import pytest

from builders.bench_nodes import safetensors_elements
from builders.errors import ModelError
from builders.executors.container_memory import rss_bytes
from builders.models import synthetic
from builders.models.source import parse_source
from helpers import ROOT, invoke

# the published figures of the two models (their model cards / config.json)
PUBLISHED = {
    "qwen2.5-0.5b": {"hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
                     "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                     "max_position_embeddings": 32768, "architectures": ["Qwen2ForCausalLM"]},
    "llama-3.2-1b": {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
                     "tie_word_embeddings": True, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
                     "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                     "architectures": ["LlamaForCausalLM"]},
}
PARAMETERS = {"qwen2.5-0.5b": 494_032_768, "llama-3.2-1b": 1_235_814_400}  # as the model cards count them


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_embedded_config_is_the_published_one(name):
    config = synthetic.synthetic_config(name)
    assert {k: config[k] for k in PUBLISHED[name]} == PUBLISHED[name]
    assert config == json.loads((ROOT / "builders/models/configs" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_the_real_model(name):
    shapes = synthetic.parameter_shapes(synthetic.synthetic_config(name))  # meta device: no memory
    assert sum(math.prod(s) for _, s in shapes) == PARAMETERS[name]
    assert "lm_head.weight" not in dict(shapes)  # tied: stored once, as the real checkpoints do
    assert dict(shapes)["model.embed_tokens.weight"][0] == PUBLISHED[name]["vocab_size"]


def test_layers_override_changes_only_that_field():
    full = synthetic.synthetic_config("qwen2.5-0.5b")
    small = synthetic.synthetic_config("qwen2.5-0.5b@layers=2")
    assert small.pop("num_hidden_layers") == 2
    full.pop("num_hidden_layers")
    assert small == full


def test_source_names():
    src = parse_source("synthetic:qwen2.5-0.5b")
    assert (src.kind, src.name, src.arch) == ("synthetic", "synthetic-qwen2.5-0.5b", "qwen2.5-0.5b")
    assert parse_source("synthetic:llama-3.2-1b@layers=2").name == "synthetic-llama-3.2-1b-layers2"
    assert parse_source("synthetic:llama-3.2-1b", name="l1b").name == "l1b"


@pytest.mark.parametrize("spec, words", [
    ("synthetic:qwen3-8b", ["unknown synthetic config 'qwen3-8b'", "synthetic:llama-3.2-1b", "synthetic:qwen2.5-0.5b"]),
    ("synthetic:", ["unknown synthetic config ''"]),
    ("synthetic:qwen2.5-0.5b@heads=2", ["override 'heads=2'", "layers"]),
    ("synthetic:qwen2.5-0.5b@layers=0", ["layers=0", "at least 1"]),
    ("synthetic:qwen2.5-0.5b@layers=two", ["layers=two"]),
    ("synthetic:qwen2.5-0.5b@", ["nothing after '@'"]),
])
def test_bad_names_are_one_line_errors(spec, words):
    with pytest.raises(ModelError) as e:
        parse_source(spec)
    assert "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value)


def test_cli_refuses_an_unknown_config_in_one_line(tmp_path):
    proc = invoke("plan", "--model", "synthetic:gpt-5", "--backends", "gguf", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "synthetic:qwen2.5-0.5b" in lines[0], proc.stderr


def test_plan_digest_covers_config_seed_and_generator(tmp_path):
    from dataclasses import replace

    from builders import matrix as matrix_mod
    from builders.models import nodes
    from builders.plan import Planner, make_plan
    from builders.store import Store

    m = matrix_mod.load(ROOT / "matrix.yaml")
    sel = matrix_mod.select(m, model="synthetic:qwen2.5-0.5b", backends_="gguf", quants="F16", targets="cpu")
    plan = make_plan(m, sel, Store(tmp_path / "o", cache_from=[]))
    model = plan.models["synthetic-qwen2.5-0.5b"]
    pn = plan.nodes[model.node]
    assert pn.node.kind == "synthetic-model" and pn.node.image == "gguf"
    assert pn.node.params["generator"] == synthetic.generator_code()
    assert model.digest == pn.digest and model.config == synthetic.synthetic_config("qwen2.5-0.5b")
    assert [p.node.kind for p in plan.nodes.values()].count("reference") == 1

    # the digest changes with each of the generator's inputs (same planner, the same node otherwise)
    nd = nodes.synthetic_node("qwen2.5-0.5b")
    planner = Planner(m, Store(tmp_path / "p", cache_from=[]))
    digests = {planner._add(replace(nd, key=f"v{i}", params={**nd.params, **change}), {}, "x", "").digest
               for i, change in enumerate([{}, {"seed": 1}, {"generator": "0" * 64},
                                           {"config": synthetic.synthetic_config("qwen2.5-0.5b@layers=2")}])}
    assert len(digests) == 4


SMALL = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
         "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "max_position_embeddings": 512}


def test_streamed_weights_read_back(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    monkeypatch.setattr(synthetic, "BLOCK", 1000)  # many blocks per tensor: the stream must join them in order
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    info = synthetic.write_weights(SMALL, a)
    monkeypatch.setattr(synthetic, "BLOCK", 1 << 23)  # one block per tensor: the same values
    synthetic.write_weights(SMALL, b)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    tensors = load_file(a / "model.safetensors")
    shapes = dict(synthetic.parameter_shapes(SMALL))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == shapes
    assert {v.dtype for v in tensors.values()} == {torch.bfloat16}
    assert info["parameters"] == sum(math.prod(s) for s in shapes.values()) == safetensors_elements(a)
    s = synthetic.scales(SMALL)
    assert torch.all(tensors["model.norm.weight"] == torch.tensor(s["final_norm"]).bfloat16())
    assert torch.all(tensors["model.layers.0.input_layernorm.weight"] == 1)
    embed = tensors["model.embed_tokens.weight"].float()
    assert abs(embed.std().item() - synthetic.EMBED_STD) < 0.01
    down = tensors["model.layers.1.mlp.down_proj.weight"].float()
    assert abs(down.std().item() * math.sqrt(128) - s["residual_scale"]) < 0.01
    assert not torch.equal(tensors["model.layers.0.mlp.up_proj.weight"], tensors["model.layers.1.mlp.up_proj.weight"])


def test_peaked_logits(tmp_path):
    """The point of the init: top-1 probability well above uniform (1/vocab), below certainty."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    synthetic.write_weights(SMALL, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(SMALL))
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert isinstance(model.config, type(AutoConfig.for_model("qwen2")))
    ids = torch.arange(3, 403, 7).unsqueeze(0)
    with torch.no_grad():
        p = model(ids).logits[0].softmax(-1)
    top1 = p.max(-1).values
    assert top1.median().item() > 100 / SMALL["vocab_size"]
    assert top1.median().item() < 0.9999


def test_container_memory_sample_reading():
    v1 = {"usage": 900, "max_usage": 1000, "stats": {"total_rss": 300, "total_mapped_file": 50, "cache": 500}}
    v2 = {"usage": 900, "stats": {"anon": 200, "file_mapped": 20, "file": 600}}
    assert rss_bytes(v1) == 350 and rss_bytes(v2) == 220 and rss_bytes({"usage": 5}) is None
