"""coreml backend, run side on the host: conversion of the parts of a small random Llama, the numpy
interpreter of the saved ML programs against transformers, LUT spec checks and reconstruction, and
byte-deterministic packages. Needs coremltools (the coreml image has it; on a host:
`pip install -r requirements-macos.txt`); the Docker end-to-end test covers the same code in CI."""

import json

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from builders.backends.coreml import checks, convert, milrun, options, package, runtime  # noqa: E402
from builders.backends.coreml.layout import layout_of  # noqa: E402
from builders.backends.coreml.palettize import palettize_package  # noqa: E402

CONTEXT, BATCH = 32, 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=128, rope_theta=10000.0,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the init so the logits are far from flat
        for p in model.parameters():
            p.mul_(4.0)
    d = tmp_path_factory.mktemp("tiny-random-llama")
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def built(model_dir, tmp_path_factory):
    """Two chunks (layers 0-1, 2) converted, combined, plus embeddings and LM head (fp16)."""
    out = tmp_path_factory.mktemp("coreml-parts")
    params = {"model_name": "t", "luts": options.luts_for("fp16", {}), "chunks": 2,
              "options": options.normalize({"context": CONTEXT, "batch": BATCH, "chunk": 2}, "test")}
    layout = layout_of(params, model_dir)
    src = convert.Source(model_dir, CONTEXT)
    n = layout.names
    convert.save(convert.embeddings(src, BATCH), out / n["embeddings"])
    convert.save(convert.lm_head(src, 1, False), out / n["lm_head"])
    for i, layers in enumerate(layout.layers):
        last = i == len(layout.layers) - 1
        convert.save(convert.chunk(src, layers, last, 1), out / n["ffn"][i])
        convert.save(convert.chunk(src, layers, last, BATCH), out / n["prefill"][i])
        convert.combine(out / n["ffn"][i], out / n["prefill"][i], out / n["ffn_pf"][i])
    return out, layout, src


def _hf_logits(model_dir, tokens):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return m(input_ids=torch.tensor([tokens])).logits[0].numpy()


def test_interpreted_programs_match_transformers_for_prefill_and_decode(built, model_dir):
    from builders.verify.metrics import compare

    out, layout, _ = built
    tokens = [int(t) for t in np.random.RandomState(1).randint(3, 96, size=19)]
    prompt_len = 11  # two prefill batches (8 + 3), then 8 decode steps
    ref = _hf_logits(model_dir, tokens)
    pre, dec = runtime.teacher_forced(checks.load_parts(out, layout), tokens, prompt_len)
    assert pre.shape == (prompt_len, 96) and dec.shape == (8, 96)
    fp, fd = compare(ref[:prompt_len], pre), compare(ref[prompt_len:], dec)
    # fp16 arithmetic on random weights scaled x4 (the trained tiny model's fp16 cell gets ~3e-4)
    assert fp["rel_l2"] < 1e-2 and fd["rel_l2"] < 1e-2, (fp, fd)
    assert fp["top1"] >= 0.9 and fd["top1"] >= 0.9, (fp, fd)
    # the interpreter is not vacuous: a wrong position (stale KV cache) changes the logits
    s = runtime.Session(checks.load_parts(out, layout))
    s.prefill(tokens[:prompt_len])
    s.pos += 1
    wrong = s.logits(s.decode(tokens[prompt_len]))
    assert compare(ref[prompt_len:prompt_len + 1], wrong)["rel_l2"] > 5e-2


def test_spec_checks_pass_and_catch_a_missing_lut(built):
    out, layout, _ = built
    for name, want in checks.expected(layout).items():
        facts, failures = checks.spec_check(out / name, want)
        assert failures == [], failures
    name = layout.names["ffn_pf"][0]
    want = {**checks.expected(layout)[name], "lut": options.Lut(4, 8)}
    _, failures = checks.spec_check(out / name, want)
    assert failures == [f"{name}: LUT 4,8 asked but no constexpr_lut_to_dense op"]


def test_lut_palettization_spec_and_reconstruction(built, tmp_path):
    out, layout, src = built
    fp16 = out / layout.names["lm_head"]
    lut_pkg = tmp_path / "head_lut6.mlpackage"
    palettize_package(fp16, lut_pkg, 6, 4, ("conv",))
    want = {"functions": {"main": (["hidden_states"], ["logits1"], [])}, "lut": options.Lut(6, 4)}
    facts, failures = checks.spec_check(lut_pkg, want)
    assert failures == [] and facts["lut_ops"] == 1
    _, failures = checks.spec_check(lut_pkg, {**want, "lut": options.Lut(4, 8)})
    assert any("asked 4,8" in f for f in failures)
    (indices, table), = checks.lut_ops(milrun.Package(lut_pkg)).values()
    assert checks.lut_geometry(indices, table) == (6, 4) and indices.shape[0] == 96
    errors = checks.lut_errors(lut_pkg, fp16)
    (err,) = errors.values()
    assert 0 < err["rel_l2"] < 0.05
    # the dequantized weight is what the interpreter computes with
    h = np.random.RandomState(2).randn(1, 1, 64).astype(np.float16)
    dense = milrun.op_lut_to_dense({"indices": indices, "lut": table}, None).astype(np.float32).reshape(96, 64)
    got = milrun.load(lut_pkg)({"hidden_states": h})["logits1"].reshape(-1).astype(np.float32)
    np.testing.assert_allclose(got, dense @ h.reshape(-1).astype(np.float32), rtol=2e-2, atol=2e-2)


def test_saved_packages_are_byte_deterministic(built, tmp_path):
    out, layout, src = built
    a, b = tmp_path / "a.mlpackage", tmp_path / "b.mlpackage"
    convert.save(convert.embeddings(src, BATCH), a)
    convert.save(convert.embeddings(src, BATCH), b)
    assert checks.tree_hash(a) == checks.tree_hash(b) == checks.tree_hash(out / layout.names["embeddings"])
    manifest = json.loads((a / "Manifest.json").read_text())
    assert manifest["rootModelIdentifier"] == package._det_uuid("com.apple.CoreML/model.mlmodel")


def test_multifunction_package_stores_shared_weights_once(built):
    out, layout, _ = built
    weights = lambda p: (p / "Data/com.apple.CoreML/weights/weight.bin").stat().st_size  # noqa: E731
    n = layout.names
    assert weights(out / n["ffn_pf"][0]) < 1.1 * weights(out / n["ffn"][0])
    assert sorted(milrun.Package(out / n["ffn_pf"][0]).functions) == ["infer", "prefill"]


def test_unknown_op_fails_loudly(built, tmp_path):
    out, layout, _ = built
    pkg = milrun.Package(out / layout.names["lm_head"])
    block, _ = pkg.block("main")
    conv = next(op for op in block.operations if op.type == "conv")
    conv.type = "conv_transpose"
    with pytest.raises(milrun.UnsupportedOp, match="conv_transpose"):
        milrun.Function(pkg, "main")


def test_chunk_auto_estimate_covers_the_real_weight_files(built, model_dir):
    out, layout, _ = built
    config = json.loads((model_dir / "config.json").read_text())
    limit = options.chunk_mb(config, None, 2, CONTEXT)  # the estimate for two chunks (layers 0-1, 2)
    assert options.auto_chunks(config, None, limit, "test", CONTEXT) == 2
    assert options.auto_chunks(config, None, limit * 0.99, "test", CONTEXT) == 3
    largest = max(checks.weight_mb(out / name) for name in layout.names["ffn_pf"])
    assert largest <= limit, (largest, limit)
    assert largest > 0.8 * limit, "the estimate is close, not just an upper bound"


def test_qwen2_biases_and_tied_embeddings(tmp_path):
    """Qwen2: q/k/v biases (added after the 1x1 convolutions) and the LM head tied to the embeddings."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from coreml_parts import fp16_parts_vs_model

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.5)  # biases that matter
    model.save_pretrained(tmp_path / "qwen2")
    figures = fp16_parts_vs_model(model, tmp_path / "qwen2", tmp_path / "out", "q", context=CONTEXT, batch=BATCH)
    assert figures["rel_l2"] < 2e-3 and figures["top1"] == 1.0, figures


def test_split_lm_head_and_in_model_argmax(built):
    """LM head split in two outputs, and the in-model argmax variant picking the same token."""
    out, layout, src = built
    split, argmax = out / "head_split.mlpackage", out / "head_argmax.mlpackage"
    convert.save(convert.lm_head(src, 2, False), split)
    convert.save(convert.lm_head(src, 2, True), argmax)
    w = src.state["lm_head.weight"].numpy()
    for seed in range(5):
        h = np.random.RandomState(seed).randn(1, 1, 64).astype(np.float16)
        ref = w @ h.reshape(-1).astype(np.float32)
        outs = milrun.load(split)({"hidden_states": h})
        assert sorted(outs) == ["logits1", "logits2"] and outs["logits1"].shape == (1, 1, 48)
        logits = np.concatenate([outs["logits1"].reshape(-1), outs["logits2"].reshape(-1)]).astype(np.float32)
        np.testing.assert_allclose(logits, ref, rtol=1e-2, atol=2e-2)
        parts = runtime.Parts(None, [], [], milrun.load(argmax), CONTEXT, BATCH, argmax=True)
        assert runtime.Session(parts).next_token(h.reshape(1, -1), [48, 48]) == int(ref.argmax())


def test_infer_and_prefill_share_one_copy_of_the_weights(built):
    """The checker loads a multifunction package once: both functions hold the same weight arrays, kept
    in their stored fp16 (no fp32 copy of the model)."""
    from builders.backends.coreml import checks

    out, layout, _ = built
    parts = checks.load_parts(out, layout)
    for infer, prefill in zip(parts.infer, parts.prefill):
        assert infer.package is prefill.package
        big_i = {id(v) for v in infer._consts.values() if isinstance(v, np.ndarray) and v.size >= 1024}
        big_p = {id(v) for v in prefill._consts.values() if isinstance(v, np.ndarray) and v.size >= 1024}
        assert big_i and big_i == big_p
        assert {infer._consts[k].dtype for k in infer._consts if id(infer._consts[k]) in big_i} == {np.dtype(np.float16)}


def test_sessions_in_lockstep_give_the_logits_of_one_session_at_a_time(built):
    """teacher_forced_many (prompts and text as lockstep sessions, convolutions batched across them, one LM
    head pass) against runtime.teacher_forced per prompt and Session.prefill of the text: the same logits
    up to fp32 summation order in the batched products (within an fp16 rounding step)."""
    out, layout, _ = built
    parts = checks.load_parts(out, layout)
    rng = np.random.RandomState(3)
    prompts = [([int(t) for t in rng.randint(3, 96, size=n)], p) for n, p in ((19, 11), (9, 5), (6, 6), (14, 3))]
    text = [int(t) for t in rng.randint(3, 96, size=2 * BATCH + 5)]  # three prefill batches
    per_prompt, text_logits = runtime.teacher_forced_many(parts, prompts, text)
    for (tokens, prompt_len), (pre, dec) in zip(prompts, per_prompt):
        one_pre, one_dec = runtime.teacher_forced(parts, tokens, prompt_len)
        assert pre.shape == one_pre.shape and dec.shape == one_dec.shape == (len(tokens) - prompt_len, 96)
        np.testing.assert_allclose(pre, one_pre, atol=2e-2, rtol=0)
        np.testing.assert_allclose(dec, one_dec, atol=2e-2, rtol=0)
        assert (pre.argmax(-1) == one_pre.argmax(-1)).all()
    s = runtime.Session(parts)
    one_text = s.logits(s.prefill(text))
    assert text_logits.shape == one_text.shape == (len(text), 96)
    np.testing.assert_allclose(text_logits, one_text, atol=2e-2, rtol=0)
    # not vacuous: the sessions' states are their own (prompt 1's decode differs from prompt 0's at its position)
    assert not np.allclose(per_prompt[0][1][:1], per_prompt[1][1][:1], atol=1e-1)
    # no text (a check without a perplexity threshold): the prompts' logits are the same, the text's empty
    no_text, empty = runtime.teacher_forced_many(parts, prompts, [])
    assert empty.shape == (0, 96)
    for (pre, dec), (pre0, dec0) in zip(no_text, per_prompt):
        np.testing.assert_allclose(pre, pre0, atol=2e-2, rtol=0)
        np.testing.assert_allclose(dec, dec0, atol=2e-2, rtol=0)


def test_run_many_batches_pointwise_convolutions(built):
    """Function.run_many computes one conv per weight for all calls (not one per call), and each call's
    outputs equal its own __call__ within fp16 rounding."""
    out, layout, _ = built
    fn = checks.load_parts(out, layout).prefill[0]
    calls, want = [], []
    rng = np.random.RandomState(4)
    for start in (0, BATCH, 0):
        inputs = {"hidden_states": rng.randn(1, BATCH, 64).astype(np.float16),
                  "position_ids": np.arange(start, start + BATCH, dtype=np.int32),
                  "causal_mask": runtime.causal_mask(start, BATCH, CONTEXT), "current_pos": np.array([start], np.int32)}
        st = fn.new_state()
        want.append(fn(inputs, st)["output_hidden_states"])
        calls.append((inputs, fn.new_state()))
    convs, real = [0], milrun.OPS["conv"]

    def counting(a, ctx):
        convs[0] += 1
        return real(a, ctx)

    milrun.OPS["conv"] = counting
    try:
        got = fn.run_many(calls)
    finally:
        milrun.OPS["conv"] = real
    assert convs[0] == sum(op.type == "conv" for op in fn.block.operations)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.float32(g["output_hidden_states"]), np.float32(w), atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("values", [[0.5, -3.0], [70000.0, 1.0], [-65504.0, 65504.0], [np.inf, 2.0], [-3e38, 1.0],
                                    [np.nan, 1.0], [np.nan, -1e5]])
def test_light_fp16_overflow_check_answers_as_coremltools(values, monkeypatch):
    """convert._fp16_overflow (blockwise, no index arrays) gives coremltools' own answer for finite values in
    and out of the fp16 range, infinities and NaN."""
    from coremltools.converters.mil import Builder as mb

    monkeypatch.setattr(convert, "OVERFLOW_BLOCK", 4)  # two blocks for the six values
    convert._light_fp16_overflow_check()
    (original,) = convert.COREMLTOOLS_FP16_OVERFLOW
    const = np.array(values * 3, np.float32).reshape(2, 3)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))])
    def prog(x):
        return mb.add(x=x, y=const)

    (op,) = [o for o in prog.functions["main"].operations if o.op_type == "add"]
    assert convert._fp16_overflow(op) == original(op)
    assert original(op) == bool(np.nanmax(np.where(np.abs(const) < 1e38, np.abs(const), 0)) > 65504)


def test_palettizer_uses_the_optimal_1d_kmeans_for_small_blocks():
    """A per_grouped_channel block (4 rows x 896) is below coremltools' 10,000-weight kmeans1d cut-off: the
    palettizing process makes it use the optimal 1-D k-means anyway (never a worse clustering than
    scikit-learn's k-means++, and deterministic)."""
    from coremltools.models.neural_network import quantization_utils
    from coremltools.optimize.coreml import _quantization_passes as passes

    from builders.backends.coreml import palettize

    w = (np.random.RandomState(5).randn(4, 896) * 0.05).astype(np.float16)
    palettize._optimal_1d_kmeans()
    lut, idx = passes._get_kmeans_lookup_table_and_weight(6, w)
    want_lut, want_idx = quantization_utils._get_kmeans_lookup_table_and_weight(6, w, force_kmeans1d=True)
    np.testing.assert_array_equal(np.asarray(lut), np.asarray(want_lut))
    np.testing.assert_array_equal(np.asarray(idx), np.asarray(want_idx))

    def sse(lut, idx):
        return float(((np.asarray(lut).reshape(-1)[np.asarray(idx).reshape(-1)] - w.reshape(-1).astype(np.float64)) ** 2).sum())

    sk_lut, sk_idx = quantization_utils._get_kmeans_lookup_table_and_weight(6, w)  # scikit-learn below the cut-off
    assert sse(lut, idx) < sse(sk_lut, sk_idx)


def test_a_call_drops_each_intermediate_value_after_its_last_reader(built):
    """milrun frees a value once no later op reads it: every value an op computes (not a block output) is
    dropped exactly once, at or after the op that computes it and at its last reader."""
    out, layout, _ = built
    fn = checks.load_parts(out, layout).prefill[0]
    ops = fn.block.operations
    made = {o.name: i for i, op in enumerate(ops) if op.type != "const" and not op.type.startswith("constexpr_")
            for o in op.outputs}
    dropped = {name: i for i, names in enumerate(fn._dead_after) for name in names}
    assert sum(len(d) for d in fn._dead_after) == len(dropped)  # once each
    readers = {}
    for i, op in enumerate(ops):
        for arg in op.inputs.values():
            for b in arg.arguments:
                if b.name:
                    readers[b.name] = i
    for name, i in made.items():
        if name in fn.block.outputs or name not in readers:
            assert name not in dropped
        else:
            assert dropped[name] == readers[name] >= i, name
    assert len(dropped) > len(made) // 2  # most computed values are intermediate


def test_tree_hash_is_sha256_over_paths_and_file_digests(built):
    """checks.tree_hash (files streamed) is sha256 over (relative path, NUL, sha256 of the bytes), sorted."""
    import hashlib

    out, layout, _ = built
    pkg = out / layout.names["ffn_pf"][0]
    h = hashlib.sha256()
    for f in sorted(p for p in pkg.rglob("*") if p.is_file()):
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    assert checks.tree_hash(pkg) == h.hexdigest()
