"""coreml backend, plan side: LUT presets and option parsing, the --chunk auto estimate, node expansion,
step numbering (fast: no torch, no coremltools, no Docker)."""

import pytest

from builders.backends import get
from builders.backends.base import REFERENCE, Cell, ModelRef
from builders.backends.coreml import options as opt
from builders.errors import MatrixError

BACKEND = get("coreml")
# Llama-3.2-1B's shapes (config.json fields the estimate reads)
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "architectures": ["LlamaForCausalLM"],
            "model_type": "llama"}
TINY = {**LLAMA_1B, "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 512}


def model(config=TINY, name="tiny-llama"):
    return ModelRef(name, "tiny:llama", "tiny-abc1234", "d" * 64, config, config["architectures"][0])


@pytest.mark.parametrize("value, expect", [
    (4, opt.Lut(4, opt.DEFAULT_GROUP)), ("6,4", opt.Lut(6, 4)), ("4,8", opt.Lut(4, 8)), (" 8 , 16 ", opt.Lut(8, 16)),
    (None, None), ("", None), ("none", None), (False, None)])
def test_lut_accepts_bits_or_bits_and_group_size(value, expect):
    assert opt.parse_lut(value, "lut2") == expect


@pytest.mark.parametrize("value, words", [(5, "must be one of"), ("4,0", "group_size"), ("x", "bits,group_size"),
                                          ("4,8,2", "bits,group_size"), (True, "bits,group_size")])
def test_bad_lut_is_one_line_naming_the_field(value, words):
    with pytest.raises(MatrixError) as e:
        BACKEND.normalize_options({"lut2": value}, "matrix.yaml cells.x")
    msg = str(e.value)
    assert "\n" not in msg and "lut2" in msg and "matrix.yaml cells.x" in msg and words in msg


@pytest.mark.parametrize("options, words", [
    ({"chunk": 0}, "chunk=0"), ({"chunk": "many"}, "auto"), ({"context": -1}, "context=-1"),
    ({"batch": 1024}, "lower batch"), ({"argmax": "yes"}, "true or false"), ({"max_chunk_mb": 0}, "MiB"),
    ({"prefix": "a/b"}, "prefix"), ({"luts": 4}, "unknown coreml option 'luts'")])
def test_bad_options_name_field_and_fix(options, words):
    with pytest.raises(MatrixError) as e:
        BACKEND.normalize_options(options, "where")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_defaults_follow_anemll():
    o = BACKEND.normalize_options({}, "w")
    assert (o["context"], o["batch"], o["chunk"], o["argmax"]) == (512, 64, 1, False)
    assert "lut2" not in o, "LUTs come from the quant unless a cell overrides them"
    assert opt.luts_for("lut4", o) == {"lut1": None, "lut2": "4,8", "lut3": "6,8"}  # ANEMLL's none/4/6


def test_cells_lut_6_4_and_4_8_are_expressible_by_quant_and_by_override():
    assert opt.luts_for("lut6_4", {})["lut2"] == "6,4"
    assert opt.luts_for("lut4_8", {})["lut2"] == "4,8"
    o = BACKEND.normalize_options({"lut2": "4,8", "lut3": None, "lut1": 8}, "w")
    assert opt.luts_for("fp16", o) == {"lut1": "8,8", "lut2": "4,8", "lut3": None}


def test_chunk_auto_picks_fewest_chunks_that_fit():
    # Llama-3.2-1B, FFN at LUT 4 (group 8): 60.8M weights per layer -> 29.1 MiB, +10% -> 32.0 MiB
    per_layer = opt.chunk_mb(LLAMA_1B, opt.Lut(4, 8), 16)
    assert 31.9 < per_layer < 32.1
    for limit, chunks in [(1024, 1), (520, 1), (500, 2), (260, 2), (200, 3), (150, 4), (100, 6), (33, 16)]:
        n = opt.auto_chunks(LLAMA_1B, opt.Lut(4, 8), limit, "w")
        assert n == chunks, (limit, n)
        assert opt.chunk_mb(LLAMA_1B, opt.Lut(4, 8), n) <= limit
        if n > 1:
            assert opt.chunk_mb(LLAMA_1B, opt.Lut(4, 8), n - 1) > limit, "fewest chunks"
    # fp16 needs four times the room
    assert opt.auto_chunks(LLAMA_1B, None, 256, "w") == 8
    with pytest.raises(MatrixError, match="raise max_chunk_mb"):
        opt.auto_chunks(LLAMA_1B, None, 100, "w")


def test_chunk_layers_are_balanced():
    assert [list(r) for r in opt.chunk_layers(16, 3)] == [list(range(0, 6)), list(range(6, 11)), list(range(11, 16))]
    assert [len(r) for r in opt.chunk_layers(10, 6)] == [2, 2, 2, 2, 1, 1]


def test_expand_one_node_with_all_options_and_anemll_file_names():
    o = BACKEND.normalize_options({"chunk": "auto", "max_chunk_mb": 150}, "w")
    (nd,) = BACKEND.expand(Cell("llama-1b", "coreml", "lut4_8", "ane", o), model(LLAMA_1B, "llama-1b"))
    assert nd.key == "llama-1b.coreml.lut4_8.ane" and nd.kind == "coreml" and nd.image == "coreml"
    assert nd.parents == {"reference": REFERENCE} and nd.verify_quant == "lut4_8"
    assert nd.publish == "coreml" and nd.unavailable is None
    assert nd.params["chunks"] == 4 and nd.params["luts"]["lut2"] == "4,8" and nd.params["options"] == o
    names = opt.file_names("llama", nd.params["luts"], 4)
    assert names["ffn_pf"][0] == "llama_FFN_PF_lut4_chunk_01of04.mlpackage"
    assert names["lm_head"] == "llama_lm_head_lut6.mlpackage" and names["embeddings"] == "llama_embeddings.mlpackage"
    assert opt.file_names("llama", opt.luts_for("fp16", {}), 1)["ffn_pf"] == ["llama_FFN_PF_chunk_01of01.mlpackage"]


def test_unavailable_and_unsupported():
    assert BACKEND.unavailable(Cell("m", "coreml", "fp16", "ane")) is None
    assert "use one of" in BACKEND.unavailable(Cell("m", "coreml", "q4", "ane"))
    o = BACKEND.normalize_options({"context": 2048}, "w")
    mistral = {**TINY, "architectures": ["MistralForCausalLM"], "sliding_window": 1024}
    (nd,) = BACKEND.expand(Cell("m", "coreml", "fp16", "ane", o), model(mistral, "m"))
    assert "sliding_window=1024" in nd.unavailable
    with pytest.raises(MatrixError, match="exceeds the model's 2 layers"):
        BACKEND.expand(Cell("m", "coreml", "fp16", "ane", BACKEND.normalize_options({"chunk": 3}, "w")), model())


def test_steps_are_numbered_like_the_issue():
    assert [n for n, _ in BACKEND.steps("coreml")] == [
        "embeddings", "lm_head", "ffn", "prefill", "combine", "compile", "meta", "test"]


def test_plan_time_error_found_with_the_model_names_the_matrix_line(tmp_path):
    """`chunk: auto` can only be resolved with the model's shapes (in expand); its error still names the line."""
    from builders import matrix
    from builders.plan import make_plan
    from builders.store import Store

    p = tmp_path / "matrix.yaml"
    p.write_text("schema: 1\nmodels:\n  m: {source: \"tiny:llama\"}\n"
                 "defaults: {models: [m], backends: [coreml], quants: {coreml: [fp16]}, targets: [ane]}\n"
                 "verify:\n  thresholds:\n    coreml:\n      fp16: {top1_min: 0.9}\nimages: {base: {}}\n"
                 "cells:\n  'm.coreml.*': {chunk: auto, max_chunk_mb: 0.01}\n")
    m = matrix.load(p)
    with pytest.raises(MatrixError) as e:
        make_plan(m, matrix.select(m), Store(tmp_path / "out"), executor="native")  # no image pins needed
    assert str(e.value).startswith("matrix.yaml:11: cells.m.coreml.* (for m.coreml.fp16.ane)"), str(e.value)
    assert "one decoder layer alone needs" in str(e.value)
