"""coreml backend, real-vocabulary LM heads and context == batch (issue 7), on the host with coremltools:
split sizes that palettize (every part a multiple of the LUT group and of the ANE's 32-row alignment), a
Qwen2-sized (151936-row) LM head converted with those splits, the fail-closed check when coremltools
silently leaves a weight in fp16, padding of a part that is not a multiple of the group, and the
numerical check of a build whose prefill batch fills the whole context."""

import json
import math
import types

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from builders.backends.coreml import checks, convert, milrun, options, runtime  # noqa: E402
from builders.backends.coreml.layout import layout_of  # noqa: E402
from builders.backends.coreml.palettize import palettize_package  # noqa: E402
from builders.errors import NodeFailed  # noqa: E402

QWEN2_VOCAB = 151936
VOCABS = (QWEN2_VOCAB, 128256, 32000, 32001, 49152, 256000, 16385, 96)


def _head_src(weight: torch.Tensor):
    """What convert.lm_head reads from a Source: the LM head weight and the hidden size."""
    return types.SimpleNamespace(state={"lm_head.weight": weight}, cfg={"hidden": weight.shape[1]})


@pytest.mark.parametrize("quant", sorted(options.QUANTS))
@pytest.mark.parametrize("vocab", VOCABS)
def test_split_sizes_palettize_and_align_for_every_preset(vocab, quant):
    lut = options.lut_of(options.luts_for(quant, {})["lut3"])
    sizes = options.lm_head_split_sizes(vocab, lut)
    unit = math.lcm(options.ANE_ROW_ALIGN, lut.group_size if lut else 1)
    assert sum(sizes) == vocab and max(sizes) <= options.LM_HEAD_SPLIT_MAX and min(sizes) > 0
    assert len(sizes) == math.ceil(vocab / options.LM_HEAD_SPLIT_MAX), "no more parts than the ANE limit needs"
    assert all(s % unit == 0 for s in sizes[:-1]), sizes
    assert sizes == sorted(sizes, reverse=True) and max(sizes) - min(sizes) < 2 * unit, "balanced"
    last = sizes[-1] + options.lut_padding(sizes[-1], lut)
    assert lut is None or last % lut.group_size == 0
    assert last <= options.LM_HEAD_SPLIT_MAX


def test_qwen2_vocab_splits_ten_ways_in_whole_rows_for_the_ane():
    """The reported failure: 151936 split 10 ways as 15194/15193 rows (not a multiple of 8)."""
    for lut in (None, options.Lut(6, 4), options.Lut(6, 8), options.Lut(4, 16)):
        assert options.lm_head_split_sizes(QWEN2_VOCAB, lut) == [15200] * 8 + [15168] * 2
    assert options.lm_head_split_sizes(128256, options.Lut(6, 8)) == [16032] * 8  # Llama 3
    assert options.lut_padding(15969, options.Lut(6, 8)) == 7  # Llama 2 + 1 added token: last part padded
    with pytest.raises(options.MatrixError, match="lut3=6,20000.*group size of at most 512"):
        options.lm_head_split_sizes(QWEN2_VOCAB, options.Lut(6, 20000))


def test_layout_of_a_qwen2_sized_config_uses_the_split(tmp_path):
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": QWEN2_VOCAB,
              "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    params = {"model_name": "q", "luts": options.luts_for("lut6_4", {}), "chunks": 1,
              "options": options.normalize({"context": 64, "batch": 64}, "test")}
    layout = layout_of(params, tmp_path)
    assert layout.split_sizes == [15200] * 8 + [15168] * 2 and layout.splits == 10
    assert checks.expected(layout)[layout.names["lm_head"]]["functions"]["main"][1] == \
        [f"logits{i}" for i in range(1, 11)]
    params["luts"]["lut3"] = "6,20000"
    with pytest.raises(NodeFailed, match="lut3=6,20000"):
        layout_of(params, tmp_path)


def test_qwen2_sized_lm_head_program_has_palettizable_parts_and_the_right_logits(tmp_path):
    """A 151936 x 64 LM head converted with the layout's split: ten conv weights, each a multiple of
    the LUT group and of 32 rows, no padding slice, and the ten outputs concatenate to W @ h."""
    torch.manual_seed(0)
    weight = torch.randn(QWEN2_VOCAB, 64) * 0.1
    lut = options.Lut(6, 8)
    sizes = options.lm_head_split_sizes(QWEN2_VOCAB, lut)
    pkg_path = tmp_path / "qwen2_lm_head.mlpackage"
    convert.save(convert.lm_head(_head_src(weight), sizes, False, lut), pkg_path)
    pkg = milrun.Package(pkg_path)
    block, _ = pkg.block("main")
    convs = [op for op in block.operations if op.type == "conv"]
    assert len(convs) == 10 and not [op for op in block.operations if op.type == "slice_by_index"]
    consts = {op.outputs[0].name: op for op in block.operations if op.type == "const"}
    rows = [consts[op.inputs["weight"].arguments[0].name].outputs[0].type.tensorType.dimensions[0].constant.size
            for op in convs]
    assert rows == sizes and all(r % 32 == 0 and r % lut.group_size == 0 for r in rows)
    # every one of these weights is what the fail-closed check would require to be palettized
    assert len(checks.unpalettized(pkg, ("conv",))) == 10
    h = np.random.RandomState(3).randn(1, 1, 64).astype(np.float16)
    out = milrun.Function(pkg, "main")({"hidden_states": h})
    assert [out[f"logits{i + 1}"].shape for i in range(10)] == [(1, 1, s) for s in sizes]
    logits = np.concatenate([out[f"logits{i + 1}"].reshape(-1) for i in range(10)]).astype(np.float32)
    ref = weight.to(torch.float16).float().numpy() @ h.reshape(-1).astype(np.float32)
    np.testing.assert_allclose(logits, ref, rtol=1e-2, atol=1e-2)
    assert int(logits.argmax()) == int(ref.argmax())


@pytest.fixture(scope="module")
def small_head():
    """A 196-row head: parts of 96 and 100 rows, the second not a multiple of a LUT group of 8. Every row
    gives a negative logit for a positive input, so leaked zero padding would win the argmax."""
    torch.manual_seed(1)
    return -(torch.randn(196, 32) * 0.2).abs()


def test_a_weight_coremltools_skips_fails_the_node_and_the_spec_check(small_head, tmp_path):
    """Without padding, coremltools palettizes the 96-row part and leaves the 100-row part in fp16 (a log
    warning only): palettize_package fails closed, and so does the step 8 spec check of that package."""
    fp16, lut_pkg = tmp_path / "head.mlpackage", tmp_path / "head_lut6.mlpackage"
    convert.save(convert.lm_head(_head_src(small_head), [96, 100], False), fp16)
    left = r"head_lut6.mlpackage to LUT 6,8: coremltools left 1 weight\(s\) in fp16.*\[100x32"
    with pytest.raises(NodeFailed, match=left):
        palettize_package(fp16, lut_pkg, 6, 8, ("conv",))
    want = {"functions": {"main": (["hidden_states"], ["logits1", "logits2"], [])}, "lut": options.Lut(6, 8),
            "op_types": ("conv",)}
    facts, failures = checks.spec_check(lut_pkg, want)
    assert facts["lut_ops"] == 1 and len(facts["unpalettized"]) == 1
    assert failures == [f"head_lut6.mlpackage: LUT 6,8 asked but 1 weight(s) stayed fp16: {facts['unpalettized'][0]}"]


@pytest.mark.parametrize("argmax", [False, True])
def test_padded_last_part_palettizes_and_padding_never_reaches_the_outputs(small_head, tmp_path, argmax):
    lut = options.Lut(6, 8)
    fp16, lut_pkg = tmp_path / "head.mlpackage", tmp_path / "head_lut6.mlpackage"
    convert.save(convert.lm_head(_head_src(small_head), [96, 100], argmax, lut), fp16)
    palettize_package(fp16, lut_pkg, lut.bits, lut.group_size, ("conv",))
    head_out = ["argmax_idx", "argmax_val"] if argmax else ["logits1", "logits2"]
    facts, failures = checks.spec_check(lut_pkg, {"functions": {"main": (["hidden_states"], head_out, [])},
                                                  "lut": lut, "op_types": ("conv",)})
    assert failures == [] and facts["lut_ops"] == 2 and facts["unpalettized"] == []
    luts = checks.lut_ops(milrun.Package(lut_pkg))
    assert sorted(ix.shape[0] for ix, _ in luts.values()) == [96, 104], "the 100-row part padded to 104"
    dense = {ix.shape[0]: milrun.op_lut_to_dense({"indices": ix, "lut": t}, None).astype(np.float32).reshape(ix.shape[0], -1)
             for ix, t in luts.values()}
    w = np.concatenate([dense[96], dense[104][:100]])
    assert np.abs(dense[104][100:]).max() < 1e-3, "padding rows: zeros, up to the nearest LUT entry of their group"
    fn = milrun.load(lut_pkg)
    h = np.abs(np.random.RandomState(4).randn(1, 1, 32)).astype(np.float16)
    ref = w @ h.reshape(-1).astype(np.float32)
    assert ref.max() < 0, "every real logit negative: a padding row (0) would win"
    out = fn({"hidden_states": h})
    if argmax:
        parts = runtime.Parts(None, [], [], fn, 16, 16, argmax=True)
        assert runtime.Session(parts).next_token(h.reshape(1, -1), [96, 100]) == int(ref.argmax())
    else:
        assert out["logits2"].shape == (1, 1, 100)
        got = np.concatenate([out["logits1"].reshape(-1), out["logits2"].reshape(-1)]).astype(np.float32)
        np.testing.assert_allclose(got, ref, rtol=2e-2, atol=2e-2)


def test_embeddings_padded_to_the_lut_group_palettize_and_gather_the_same_rows(tmp_path):
    torch.manual_seed(2)
    table = torch.randn(100, 32)
    src = types.SimpleNamespace(state={"model.embed_tokens.weight": table})
    lut = options.Lut(4, 8)
    fp16, lut_pkg = tmp_path / "emb.mlpackage", tmp_path / "emb_lut4.mlpackage"
    convert.save(convert.embeddings(src, 4, lut), fp16)
    palettize_package(fp16, lut_pkg, lut.bits, lut.group_size, ("gather",))
    (indices, _), = checks.lut_ops(milrun.Package(lut_pkg)).values()
    assert indices.shape == (104, 32)
    ids = np.array([[0, 57, 99, 3]], np.int32)
    fn = milrun.load(lut_pkg)
    got = fn({"input_ids": ids})["hidden_states"].astype(np.float32)
    err = checks.lut_errors(lut_pkg, fp16)
    (e,) = err.values()
    assert got.shape == (1, 4, 32) and 0 < e["rel_l2"] < 0.2
    np.testing.assert_allclose(got[0], table.numpy()[ids[0]], atol=4 * e["max_abs"])
    # the checker keeps the table as indices + LUT and dequantizes only the gathered rows: the same values
    # as the whole dequantized table's rows; no unpacked copy of the indices is kept (only a map of the file)
    (indices, t), = checks.lut_ops(milrun.Package(lut_pkg)).values()
    dense = milrun.op_lut_to_dense({"indices": indices, "lut": t}, None)
    (lazy,) = [v for v in fn._consts.values() if isinstance(v, milrun.LutWeight)]
    assert lazy.shape == dense.shape and got[0].tobytes() == dense[ids[0]].astype(np.float32).tobytes()
    assert all(isinstance(v, np.memmap) for v in fn.package._blobs.values() if v.dtype == np.uint8)
    # lut_errors' blocks of rows give the whole-weight figures
    w = np.asarray(milrun.load(fp16)._consts[next(iter(err))], np.float32).reshape(dense.shape)
    d = dense.astype(np.float32) - w
    assert e["max_abs"] == float(np.abs(d).max())
    assert e["rel_l2"] == pytest.approx(float(np.linalg.norm(d) / np.linalg.norm(w)), rel=1e-6)


def test_context_equal_to_batch_builds_and_verifies(tmp_path):
    """context == batch (one prefill batch fills the whole context): the numerical check of step 8 used
    to take the perplexity text as `context - batch` tokens (none) and crash in np.concatenate."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ctx = 16
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    model.save_pretrained(tmp_path / "m")
    params = {"model_name": "t", "luts": options.luts_for("fp16", {}), "chunks": 1,
              "options": options.normalize({"context": ctx, "batch": ctx}, "test")}
    layout = layout_of(params, tmp_path / "m")
    src, out, n = convert.Source(tmp_path / "m", ctx), tmp_path / "out", layout.names
    out.mkdir()
    convert.save(convert.embeddings(src, ctx), out / n["embeddings"])
    convert.save(convert.lm_head(src, layout.split_sizes, False), out / n["lm_head"])
    convert.save(convert.chunk(src, range(1), True, 1), out / n["ffn"][0])
    convert.save(convert.chunk(src, range(1), True, ctx), out / n["prefill"][0])
    convert.combine(out / n["ffn"][0], out / n["prefill"][0], out / n["ffn_pf"][0])
    rs = np.random.RandomState(5)
    text = rs.randint(3, 96, size=40).astype(np.int32)
    prompts = [rs.randint(3, 96, size=k).astype(np.int32) for k in (12, 16)]  # 4 + 8, and the full context
    with torch.no_grad():
        logits = lambda t: model(input_ids=torch.tensor([t.tolist()])).logits[0].numpy()  # noqa: E731
        reference = {"prompts": [(p, len(p) - 8 if len(p) < ctx else 9, logits(p)) for p in prompts],
                     "text_tokens": text, "text_logits": logits(text)}
    figures = checks.numerical(checks.load_parts(out, layout), reference, layout)
    assert checks.perplexity_tokens(ctx, ctx) == ctx and checks.perplexity_tokens(64, 24) == 48
    assert figures["top1"] == 1.0 and figures["rel_l2"] < 1e-2, figures
    assert abs(figures["ppl_delta"]) < 0.05 * figures["ppl_ref"], figures
    too_long = {**reference, "prompts": [(text[:ctx + 1], 9, reference["text_logits"][:ctx + 1])]}
    with pytest.raises(NodeFailed, match=f"17 tokens, longer than the coreml option context={ctx}; set context >= 17"):
        checks.numerical(checks.load_parts(out, layout), too_long, layout)


def test_luts_that_cannot_palettize_every_weight_fail_at_plan_time():
    """A group size that does not divide a decoder-layer weight (k_proj of the tiny models has 128 rows)
    is a one-line matrix error at expansion, before any conversion; so is an LM head LUT group too
    large for one part."""
    from builders.backends import get
    from builders.backends.base import Cell, ModelRef
    from builders.models.tiny import tiny_config

    backend, config = get("coreml"), tiny_config("qwen2")
    ref = ModelRef("tiny-qwen2", "tiny:qwen2", "tiny-abc1234", "d" * 64, config, config["architectures"][0])
    for quant in options.QUANTS:  # every preset palettizes the tiny models
        backend.expand(Cell("tiny-qwen2", "coreml", quant, "ane", backend.normalize_options({}, "w")), ref)
    o = backend.normalize_options({"lut2": "4,256"}, "w")
    with pytest.raises(options.MatrixError, match=r'lut2=4,256: k_proj has 128 output channels, not a multiple of '
                                                  r'the LUT group size 256; .* e.g. lut2: "4,128"'):
        backend.expand(Cell("tiny-qwen2", "coreml", "lut4", "ane", o), ref)
    o = backend.normalize_options({"lut3": "6,20000"}, "w")
    with pytest.raises(options.MatrixError, match="coreml lut3=6,20000: a LUT group of 20000 rows"):
        backend.expand(Cell("tiny-qwen2", "coreml", "lut4", "ane", o), ref)


def test_interpreted_lm_head_takes_many_rows_per_call_with_the_same_logits(small_head, tmp_path):
    """Session.logits with lm_head_rows > 1 (the numpy interpreter, checks.load_parts) gives the logits of
    one row per call (Core ML's [1, 1, H]), padded part included; an LM head that cannot take several
    rows fails loudly instead of returning fewer logits."""
    lut = options.Lut(6, 8)
    head = tmp_path / "head.mlpackage"
    convert.save(convert.lm_head(_head_src(small_head), [96, 100], False, lut), head)
    fn = milrun.load(head)
    hidden = np.random.RandomState(6).randn(70, 32).astype(np.float16)
    one = runtime.Session(runtime.Parts(None, [], [], fn, 16, 16)).logits(hidden)
    many = runtime.Session(runtime.Parts(None, [], [], fn, 16, 16, lm_head_rows=checks.LM_HEAD_ROWS)).logits(hidden)
    assert one.shape == many.shape == (70, 196)
    np.testing.assert_allclose(many, one, rtol=2e-3, atol=2e-3)  # fp16 outputs, summation order may differ
    assert (many.argmax(1) == one.argmax(1)).all()

    def fixed(inputs, state=None):  # an LM head that always answers one row
        return fn({"hidden_states": inputs["hidden_states"][:, :1]})

    with pytest.raises(ValueError, match="for 64 hidden state"):
        runtime.Session(runtime.Parts(None, [], [], fixed, 16, 16, lm_head_rows=64)).logits(hidden)
