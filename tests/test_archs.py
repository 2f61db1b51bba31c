"""builders/archs.py: the normalized decoder config and the support table (no docker)."""

import json

import pytest

from builders import archs, backends
from builders.archs import FAMILIES, DecoderConfig
from builders.errors import ModelError
from builders.models import tiny


def test_every_tiny_model_is_the_family_of_its_name():
    for name, a in tiny.TINY_ARCHS.items():
        assert FAMILIES[a.hf_arch].name == name
        assert tiny.tiny_config(name)["model_type"] == FAMILIES[a.hf_arch].model_type


@pytest.mark.parametrize("backend", archs.BACKENDS)
def test_backends_read_their_architectures_from_the_table(backend):
    assert backends.get(backend).archs == archs.supported(backend)
    for hf_arch in ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Phi3ForCausalLM"):
        assert archs.unsupported_reason(backend, hf_arch) is None
    assert archs.supported(backend) == tuple(FAMILIES)


def test_every_mlc_family_has_a_parameter_map_and_a_model_module():
    """The MLC side of a family row: an ARCHS entry naming an nn.Module file and the checkpoint names of the
    fused parameters (Phi-3: none to un-fuse, its checkpoint stores qkv_proj / gate_up_proj as MLC does)."""
    from pathlib import Path

    from builders.backends.mlc.models import ARCHS, SEPARATE

    models_dir = Path(archs.__file__).parent / "backends" / "mlc" / "models"
    for hf_arch in archs.supported("mlc"):
        assert (models_dir / f"{ARCHS[hf_arch].module}.py").is_file()
        assert ARCHS[hf_arch].model_type == FAMILIES[hf_arch].model_type
    assert ARCHS["Phi3ForCausalLM"].unfused == {} and ARCHS["LlamaForCausalLM"].unfused == SEPARATE


def test_the_gguf_window_rule_reads_the_table():
    from builders.backends.gguf import sliding_window_reason

    assert sliding_window_reason(DecoderConfig.from_hf(tiny.tiny_config("mistral"))) is not None
    assert sliding_window_reason(DecoderConfig.from_hf(tiny.tiny_config("phi3"))) is None  # no window
    # Phi-3-mini-4k's own window (2047 < 4096): llama.cpp disables Phi SWA, so no faithful GGUF
    phi3_4k = {**tiny.tiny_config("phi3"), "sliding_window": 2047}
    assert "drops the sliding window" in sliding_window_reason(DecoderConfig.from_hf(phi3_4k))


def test_unknown_architecture_reason_names_it_and_the_table():
    reason = archs.unsupported_reason("gguf", "GPT2LMHeadModel")
    assert "GPT2LMHeadModel is not supported by the gguf backend" in reason and "builders/archs.py" in reason


def test_tiny_configs_normalize():
    llama = DecoderConfig.from_hf(tiny.tiny_config("llama"))
    assert (llama.family, llama.hidden, llama.heads, llama.kv_heads, llama.head_dim) == ("llama", 256, 4, 2, 64)
    assert llama.rope_scaling["rope_type"] == "llama3" and llama.rope_theta == 500000.0
    assert not llama.tied_embeddings and not llama.qkv_bias and llama.sliding_window is None
    qwen = DecoderConfig.from_hf(tiny.tiny_config("qwen2"))
    assert qwen.qkv_bias and qwen.tied_embeddings and qwen.sliding_window is None  # use_sliding_window false
    mistral = DecoderConfig.from_hf(tiny.tiny_config("mistral"))
    assert mistral.sliding_window == 1024 and mistral.max_positions == 4096


def test_field_defaults_and_rope_parameters():
    base = {k: v for k, v in tiny.tiny_config("llama").items()
            if k not in ("head_dim", "num_key_value_heads", "rope_theta", "rope_scaling")}
    # transformers >= 5 writes rope_theta into rope_parameters next to the scaling fields
    c = DecoderConfig.from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1234.0}})
    assert c.head_dim == 256 // 4 and c.kv_heads == 4 and c.rope_theta == 1234.0 and c.rope_scaling == {}
    c = DecoderConfig.from_hf({**base, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert c.rope_scaling == {"rope_type": "linear", "factor": 2.0}


@pytest.mark.parametrize("fields, context, below", [
    ({"sliding_window": 1024, "max_position_embeddings": 4096}, None, True),
    ({"sliding_window": 1024, "max_position_embeddings": None}, None, True),  # no context length: may matter
    ({"sliding_window": 4096, "max_position_embeddings": 4096}, None, False),
    ({"sliding_window": 1024, "max_position_embeddings": 4096}, 1024, False),  # a context within the window
    ({"sliding_window": 1024, "use_sliding_window": False}, None, False),
    ({"sliding_window": None}, 8192, False),
])
def test_window_rule(fields, context, below):
    assert DecoderConfig.from_hf({**tiny.tiny_config("mistral"), **fields}).window_below(context) == below


def test_bad_configs_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="GPT2LMHeadModel is not supported"):
        DecoderConfig.from_hf({"architectures": ["GPT2LMHeadModel"]})
    cfg = {k: v for k, v in tiny.tiny_config("llama").items() if k != "hidden_size"}
    with pytest.raises(ModelError, match="no field 'hidden_size'"):
        DecoderConfig.from_hf(cfg)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_size": "wide"}))
    with pytest.raises(ModelError, match="bad value"):
        DecoderConfig.read(tmp_path)
    with pytest.raises(ModelError, match="cannot read"):
        DecoderConfig.read(tmp_path / "missing")
