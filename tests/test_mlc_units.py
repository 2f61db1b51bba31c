"""mlc backend on the host, without Docker or TVM: the plan side (quant codes, legacy refusals,
targets, options, node expansion) and the numpy parts of the run side (group quantizer layout and
error bound, streaming weight conversion into MLC's tensor-cache format, mlc-chat-config.json)
on a real transformers checkpoint written here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from builders.backends import get as get_backend
from builders.backends.base import REFERENCE, Cell, ModelRef
from builders.backends.mlc import quant as q_mod
from builders.backends.mlc.models import ModelConfig
from builders.errors import MatrixError

BACKEND = get_backend("mlc")

TINY_CFG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 96, "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
}


# Phi-3 with the same sizes: its checkpoint stores qkv_proj / gate_up_proj fused (models.ARCHS: unfused={})
PHI3_CFG = {**TINY_CFG, "architectures": ["Phi3ForCausalLM"], "model_type": "phi3",
            "original_max_position_embeddings": 256, "pad_token_id": None}
CONFIGS = {"llama": TINY_CFG, "phi3": PHI3_CFG}


def _model(cfg=TINY_CFG, name="tiny-test") -> ModelRef:
    return ModelRef(name, "local", "local-abc1234", "d" * 64, cfg, cfg["architectures"][0])


def _cell(quant="q4f16_1", target="cpu", **opts) -> Cell:
    return Cell("tiny-test", "mlc", quant, target, BACKEND.normalize_options(opts, "test"))


# ---- plan side -------------------------------------------------------------------------------------

def test_quant_codes_and_legacy_codes():
    for code in ("q0f32", "q0f16", "q4f16_1", "q4f32_1", "q3f16_1"):
        assert code in BACKEND.quants and BACKEND.unavailable(_cell(code)) is None
    # legacy codes that MLC's current flow still defines: mapped explicitly, KN layout
    assert q_mod.QUANTS["q4f16_0"].layout == "KN" and q_mod.QUANTS["q4f16_1"].layout == "NK"
    assert BACKEND.unavailable(_cell("q4f16_0")) is None
    # legacy codes without an equivalent: refused, naming the code to use
    assert "use q4f32_1" in BACKEND.unavailable(Cell("m", "mlc", "q4f32_0", "cpu"))
    assert "use q0f16" in BACKEND.unavailable(Cell("m", "mlc", "q8f16_0", "cpu"))


def test_vulkan_cells_are_built_on_ci_runners_unless_a_local_tvm_source_is_given(tmp_path):
    images = {"mlc-vulkan": {"from": "base", "llvm": 15, "tvm_source": None}}
    for target in ("vulkan", "vulkan-windows"):
        assert BACKEND.unavailable(_cell(target=target)) is None
        reason = BACKEND.built_on_ci(_cell(target=target), images)
        assert reason.startswith("built on CI runners") and "tvm_source" in reason and "\n" not in reason
    assert BACKEND.built_on_ci(_cell(target="android"), images) is None
    assert BACKEND.built_on_ci(_cell(target="webgpu"), images) is None
    git = {"mlc-vulkan": {"tvm_source": {"git": "https://github.com/apache/tvm", "commit": "a" * 40}}}
    assert "cloned there" in BACKEND.built_on_ci(_cell(target="vulkan"), git)
    from builders.backends.mlc import tvm_source

    assert tvm_source.ci_runner_reason(git, {"GITHUB_ACTIONS": "true"}) is None  # the runner builds it
    tarball = tmp_path / "tvm.tar.gz"
    tarball.write_bytes(b"x")
    local = {"mlc-vulkan": {"tvm_source": {"tarball": str(tarball), "sha256": "b" * 64}}}
    assert BACKEND.built_on_ci(_cell(target="vulkan"), local) is None
    assert tvm_source.context_file(local) == tarball.resolve()


@pytest.mark.parametrize("source, field", [
    ({"git": "https://github.com/apache/tvm", "commit": "v0.22"}, "tvm_source.commit"),
    ({"commit": "a" * 40}, "tvm_source.git"),
    ({"tarball": "/nonexistent/tvm.tar.gz", "sha256": "b" * 64}, "tvm_source.tarball"),
    ({"url": "x"}, "tvm_source:"),
])
def test_a_malformed_tvm_source_names_its_field(source, field):
    with pytest.raises(MatrixError, match=field.replace(".", r"\.")):
        BACKEND.built_on_ci(_cell(target="vulkan"), {"mlc-vulkan": {"tvm_source": source}})


def test_library_files_per_target():
    from builders.backends.mlc import lib_file_name

    assert lib_file_name("m", "webgpu") == "m.wasm"  # linked here (webgpu image)
    assert lib_file_name("m", "vulkan") == "m.so" and lib_file_name("m", "vulkan-windows") == "m.dll"
    assert lib_file_name("m", "metal") == "m.tar" and lib_file_name("m", "android") == "m.tar"
    nodes = BACKEND.expand(_cell(target="webgpu"), _model())
    assert [n.image for n in nodes if n.kind == "mlc-compile"] == ["mlc", "webgpu"]
    # the webgpu library node runs the .wasm (Node + npm webgpu + lavapipe are in the webgpu image)
    assert [n.image for n in nodes if n.kind == "mlc-lib"] == ["mlc", "webgpu"]


def test_options_are_validated_with_the_location():
    assert BACKEND.normalize_options({}, "w") == {"context_window_size": 512, "prefill_chunk_size": 128,
                                                  "conv_template": None}
    assert BACKEND.normalize_options({"max_seq_len": 64}, "w")["prefill_chunk_size"] == 64
    with pytest.raises(MatrixError, match="matrix.yaml: unknown mlc option 'ctx'"):
        BACKEND.normalize_options({"ctx": 1}, "matrix.yaml")
    with pytest.raises(MatrixError, match="context_window_size=-5 must be a positive integer"):
        BACKEND.normalize_options({"context_window_size": -5}, "matrix.yaml")


def test_expand_shares_weights_across_targets():
    model = _model()
    nodes = {t: BACKEND.expand(_cell(target=t), model) for t in ("cpu", "cuda")}
    w_cpu, c_cpu, lib_cpu = nodes["cpu"]
    w_cuda, c_cpu_again, lib_cpu_again, c_cuda, lib_cuda = nodes["cuda"]
    assert (c_cpu_again.key, lib_cpu_again.key) == (c_cpu.key, lib_cpu.key)
    assert w_cpu.key == w_cuda.key == "tiny-test.mlc.q4f16_1.weights" and w_cpu.params == w_cuda.params
    assert w_cpu.kind == "mlc-weights" and w_cpu.publish == "mlc/tiny-test-q4f16_1-MLC"
    assert w_cpu.parents == {"reference": REFERENCE} and w_cpu.verify_quant == "q4f16_1"
    assert lib_cpu.key == "tiny-test.mlc.q4f16_1.lib.cpu" and lib_cuda.key.endswith(".lib.cuda")
    assert lib_cpu.parents == {"weights": w_cpu, "compiled": c_cpu, "reference": REFERENCE}
    assert lib_cpu_again.parents == lib_cpu.parents and lib_cpu_again.params == lib_cpu.params
    assert c_cpu.verify_quant is None, "a compile has no numeric check: no thresholds in its digest"
    assert c_cpu.kind == "mlc-compile" and not c_cpu.uses_model and c_cpu.parents == {} and c_cpu.publish is None
    # every node names its quant `quant` (the manifest's `quant` field reads it); no `quantization` key
    assert [n.params["quant"] for n in nodes["cpu"]] == ["q4f16_1"] * 3 and "quantization" not in c_cpu.params
    assert c_cpu.key != c_cuda.key and c_cpu.key.endswith(".q4f16_1-ctx512.compile.cpu")
    assert lib_cpu.publish == "mlc/libs" and lib_cpu.kind == "mlc-lib"
    # MLC naming: <Model>-<quant>[-ctx<N>]-<target>; the suffix appears when the context differs
    assert lib_cpu.params["lib_stem"] == "tiny-test-q4f16_1-ctx512-cpu"
    (_, _, lib_full) = BACKEND.expand(_cell(context_window_size=256), model)
    assert lib_full.params["lib_stem"] == "tiny-test-q4f16_1-cpu"


@pytest.mark.parametrize("target", ["cuda", "android", "iphone", "webgpu", "metal"])
def test_a_library_that_cannot_run_here_depends_on_the_numeric_check_of_its_weights(target):
    """Only the cpu library runs here: every other target's library node has it as parent `verified_by`,
    so it is skipped when the weights fail numerically, and it is the cell's last node."""
    nodes = BACKEND.expand(_cell(target=target), _model())
    lib = nodes[-1]
    assert lib.key == f"tiny-test.mlc.q4f16_1.lib.{target}"
    assert lib.parents["verified_by"].key == "tiny-test.mlc.q4f16_1.lib.cpu"
    assert "tiny-test.mlc.q4f16_1.lib.cpu" in [n.key for n in nodes[:-1]]
    assert "verified_by" not in BACKEND.expand(_cell(target="cpu"), _model())[-1].parents


def test_compile_is_shared_by_models_of_equal_architecture_and_config_only():
    """reuse-lib: the compile node is keyed by architecture + config + quant + target, never by the
    model's name or weights, so a weights-only variant plans the same compile node."""
    base = BACKEND.expand(_cell(), _model())[1]
    variant = BACKEND.expand(_cell(), _model(name="tiny-test-finetune"))[1]
    assert (variant.key, variant.params) == (base.key, base.params)
    assert "tiny-test" not in base.key and "model_name" not in base.params
    for change in ({"rope_theta": 500000.0}, {"num_hidden_layers": 3}, {"architectures": ["Qwen2ForCausalLM"]}):
        other = BACKEND.expand(_cell(), _model({**TINY_CFG, **change}))[1]
        assert other.key != base.key, change
    assert BACKEND.expand(_cell(context_window_size=128), _model())[1].key != base.key
    # transformers >= 5 saves rope_theta inside rope_scaling too: the same model, the same library
    llama3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    a = BACKEND.expand(_cell(), _model({**TINY_CFG, "rope_scaling": llama3}))[1]
    b = BACKEND.expand(_cell(), _model({**TINY_CFG, "rope_scaling": {**llama3, "rope_theta": 10000.0}}))[1]
    assert a.key == b.key and a.key != base.key


def test_mistral_context_wider_than_its_window_is_refused():
    cfg = {**TINY_CFG, "architectures": ["MistralForCausalLM"], "sliding_window": 128}
    weights, _, lib = BACKEND.expand(_cell(context_window_size=256), _model(cfg))
    assert "sliding_window 128" in weights.unavailable and lib.unavailable == weights.unavailable
    assert BACKEND.expand(_cell(context_window_size=128), _model(cfg))[0].unavailable is None


# ---- group quantizer ---------------------------------------------------------------------------------

def test_q4_packing_follows_mlc_layout():
    """One row of 32 values whose levels are known: q = round(w/scale) + 7 packed 8 per uint32,
    element i of a word at bits 4i (little end first); scale = max|w| / 7 in float16."""
    levels = np.array([i % 15 for i in range(32)], dtype=np.int64)  # 0..14
    w = ((levels - 7) * 0.5).astype(np.float32)[None, :]  # max|w| = 3.5 -> scale 0.5
    qw, qs = q_mod.quantize(w, q_mod.QUANTS["q4f16_1"])
    assert qs.dtype == np.float16 and qs.tolist() == [[0.5]]
    expected = [sum(int(levels[8 * j + i]) << (4 * i) for i in range(8)) for j in range(4)]
    assert qw.dtype == np.uint32 and qw[0].tolist() == expected
    kn_w, kn_s = q_mod.quantize(w, q_mod.QUANTS["q4f16_0"])
    assert kn_w.shape == (4, 1) and kn_w[:, 0].tolist() == expected and kn_s.shape == (1, 1)


@pytest.mark.parametrize("code", ["q4f16_1", "q4f32_1", "q3f16_1", "q4f16_0", "q3f16_0"])
def test_quantization_error_within_the_bound(code):
    q = q_mod.QUANTS[code]
    w = np.random.default_rng(0).normal(size=(48, 200)).astype(np.float32)  # 200: not a multiple of 40/32
    qw, qs = q_mod.quantize(w, q)
    assert qw.shape == ((48, q.words(200)) if q.layout == "NK" else (q.words(200), 48))
    err = np.abs(q_mod.dequantize(qw, qs, 200, q) - w)
    bound = q_mod.error_bound(w, q)
    assert (err <= bound).all()
    assert err.max() > 0.5 * bound.max()  # the bound is tight, not vacuous


# ---- streaming conversion + chat config on a real checkpoint ----------------------------------------

@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = tmp_path_factory.mktemp("hf-llama")
    torch.manual_seed(0)
    cfg = dict(TINY_CFG)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    model.save_pretrained(d, safe_serialization=True)
    (d / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    # a loadable SentencePiece-style tokenizer.json (byte fallback) whose post-processor adds <s> (id 1)
    from tokenizers import Tokenizer, decoders, models, processors

    tok = Tokenizer(models.BPE(vocab={"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}, merges=[], unk_token="<unk>",
                               byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(d / "tokenizer.json"))
    return d



@pytest.fixture(scope="module")
def phi3_dir(tmp_path_factory):
    """A Phi-3 checkpoint (weights + config only) of PHI3_CFG."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = tmp_path_factory.mktemp("hf-phi3")
    torch.manual_seed(0)
    cfg = dict(PHI3_CFG)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg)).save_pretrained(d)
    return d


def _checkpoint(request, arch: str) -> tuple[Path, dict]:
    return request.getfixturevalue("hf_dir" if arch == "llama" else f"{arch}_dir"), CONFIGS[arch]


@pytest.mark.parametrize("code, arch", [("q0f32", "llama"), ("q4f16_1", "llama"), ("q3f16_0", "llama"),
                                        ("q0f32", "phi3"), ("q4f16_1", "phi3")])
def test_convert_weight_writes_mlc_tensor_cache(request, tmp_path, code, arch):
    from safetensors.torch import load_file

    from builders.backends.mlc import convert_weight
    from builders.backends.mlc.reference import dequantized_params, hf_state

    hf_dir, cfg = _checkpoint(request, arch)
    hf_arch = cfg["architectures"][0]
    q = q_mod.QUANTS[code]
    c = ModelConfig.from_hf(cfg, {"context_window_size": 128})
    summary = convert_weight.convert(hf_dir, tmp_path, c, q, hf_arch, log=lambda *_: None)
    cache = json.loads((tmp_path / "tensor-cache.json").read_text())
    assert set(cache["metadata"]) == {"ParamSize", "ParamBytes", "BitsPerParam"}
    names = []
    for shard in cache["records"]:
        data = (tmp_path / shard["dataPath"]).read_bytes()
        assert shard["format"] == "raw-shard" and shard["nbytes"] == len(data)
        assert shard["md5sum"] == hashlib.md5(data).hexdigest()
        for r in shard["records"]:
            assert set(r) == {"name", "shape", "dtype", "format", "nbytes", "byteOffset"}
            names.append(r["name"])
    plan = convert_weight.param_plan(c, q, hf_arch)
    assert names == [p.name for p in plan] and summary["params"] == len(plan)
    arrays = convert_weight.read_cache(tmp_path)
    for p in plan:
        assert arrays[p.name].shape == p.shape and str(arrays[p.name].dtype) == p.dtype
    if q.bits:
        assert "model.layers.0.self_attn.qkv_proj.q_weight" in arrays
        # 4 bits + a float16 scale per 32 values (+ float16 norms); 3-bit groups of 40 pad the 64-wide rows to 80
        assert 4.5 < summary["bits_per_param"] < 4.6 if q.bits == 4 else 3.0 < summary["bits_per_param"] < 4.6
    # un-fusing the stored (dequantized) params gives back the original tensors (exactly for q0f32); a
    # Phi-3 checkpoint's fused tensors come back under their own names
    original = {k: v.numpy() for k, v in load_file(str(hf_dir / "model.safetensors")).items()}
    assert ("model.layers.0.mlp.gate_up_proj.weight" in original) == (arch == "phi3")
    back = hf_state(dequantized_params(tmp_path, c, q, hf_arch), c, hf_arch)
    assert set(back) == set(original)
    for k, v in original.items():
        if q.bits == 0:
            assert np.array_equal(back[k], v), k
        elif v.ndim == 2:
            assert (np.abs(back[k] - v) <= q_mod.error_bound(v, q)).all(), k


def test_shards_are_cut_at_the_cap(hf_dir, tmp_path):
    from builders.backends.mlc import convert_weight

    c = ModelConfig.from_hf(TINY_CFG, {})
    writer = convert_weight.ShardWriter(tmp_path, cap=20000)
    writer.add("a", np.zeros((3000,), np.float32))
    writer.add("b", np.zeros((3000,), np.float32))
    writer.add("c", np.zeros((10,), np.float32))
    writer.flush()
    assert [[r["name"] for r in s["records"]] for s in writer.shards] == [["a"], ["b", "c"]]
    assert writer.shards[1]["records"][1]["byteOffset"] == 12000 and c.head_dim == 16


def test_chat_config_fields(hf_dir, tmp_path):
    from builders.backends.mlc import gen_config

    c = ModelConfig.from_hf(TINY_CFG, {"context_window_size": 128, "prefill_chunk_size": 64})
    cfg = gen_config.write(hf_dir, tmp_path, TINY_CFG, c, q_mod.QUANTS["q4f16_1"], None)
    on_disk = json.loads((tmp_path / "mlc-chat-config.json").read_text())
    assert on_disk == json.loads(json.dumps(cfg))
    for field in ("model_type", "quantization", "model_config", "vocab_size", "context_window_size",
                  "sliding_window_size", "prefill_chunk_size", "tensor_parallel_shards", "temperature",
                  "top_p", "tokenizer_files", "tokenizer_info", "conv_template", "bos_token_id",
                  "eos_token_id", "pad_token_id"):
        assert field in cfg, field
    assert cfg["model_type"] == "llama" and cfg["quantization"] == "q4f16_1" and cfg["context_window_size"] == 128
    assert cfg["conv_template"]["name"] == "llama-3" and cfg["conv_template"]["stop_token_ids"] == [2]
    assert cfg["tokenizer_files"] == ["tokenizer.json", "tokenizer_config.json"]
    assert (tmp_path / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()
    assert cfg["tokenizer_info"]["token_postproc_method"] == "byte_fallback"
    other = gen_config.chat_config(hf_dir, TINY_CFG, c, q_mod.QUANTS["q0f32"], "LM")
    assert other["conv_template"]["name"] == "LM"


def _lib_ctx(tmp_path, record=None, with_parent=True):
    from builders.backends.base import NodeContext

    parent = tmp_path / "cpu-lib"
    parent.mkdir()
    if record is not None:
        (parent / "tiny-test-q4f16_1-ctx512-cpu.verification.json").write_text(json.dumps(record))
    spec = {"key": "tiny-test.mlc.q4f16_1.lib.android", "params": {"target": "android"},
            "parents": {"verified_by": {"key": "tiny-test.mlc.q4f16_1.lib.cpu"}} if with_parent else {}}
    return NodeContext(spec, tmp_path / "out", tmp_path / "work", {"verified_by": parent} if with_parent else {})


def test_structural_library_check_takes_the_cpu_librarys_figures(tmp_path):
    from builders.backends.mlc.steps import _weights_verification

    record = {"passed": True, "checks": {"top1": 0.99, "kl": 0.002}, "thresholds": {"top1_min": 0.9},
              "failures": []}
    got = _weights_verification(_lib_ctx(tmp_path, record))
    assert got == {"node": "tiny-test.mlc.q4f16_1.lib.cpu", "passed": True, "checks": record["checks"],
                   "thresholds": {"top1_min": 0.9}, "failures": []}


@pytest.mark.parametrize("record, with_parent, fragment", [
    (None, True, "expected one *.verification.json"),
    ({"passed": True}, False, "needs its weights' numeric check"),
])
def test_structural_library_check_fails_closed_without_weights_figures(tmp_path, record, with_parent, fragment):
    from builders.backends.mlc.steps import _weights_verification
    from builders.errors import NodeFailed

    with pytest.raises(NodeFailed, match=fragment.replace("*", r"\*")):
        _weights_verification(_lib_ctx(tmp_path, record, with_parent))


@pytest.mark.parametrize("code, arch", [("q4f16_1", "llama"), ("q0f32", "llama"), ("q4f16_1", "phi3")])
def test_layer_streamed_reference_equals_the_whole_fp32_model(request, tmp_path, code, arch):
    """The library-vs-dequantized reference is computed layer by layer (no second full fp32 model), with
    every sequence packed into one row (positions restarting, attention within a sequence only): it must
    give each sequence's logits of the whole HF model carrying the same dequantized weights."""
    from builders.backends.mlc import convert_weight, reference

    hf_dir, cfg = _checkpoint(request, arch)
    hf_arch = cfg["architectures"][0]
    q = q_mod.QUANTS[code]
    c = ModelConfig.from_hf(cfg, {"context_window_size": 128})
    convert_weight.convert(hf_dir, tmp_path, c, q, hf_arch, log=lambda *_: None)
    sequences = [np.array([1, 5, 9, 33, 95, 7, 7, 2]), np.array([3]), np.arange(40) % 96]
    streamed = reference.streamed_logits(hf_dir, tmp_path, c, q, hf_arch, sequences)
    whole = reference.forward_fn(hf_dir, reference.hf_state(reference.dequantized_params(tmp_path, c, q, hf_arch),
                                                            c, hf_arch))
    for tokens, logits in zip(sequences, streamed):
        expected = whole(tokens)
        assert logits.shape == (len(tokens), 96) and logits.dtype == np.float32
        assert np.abs(logits - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))
    # the head is dequantized in blocks of vocabulary rows: a block smaller than the vocabulary agrees too
    saved = reference.LM_HEAD_ROWS
    try:
        reference.LM_HEAD_ROWS = 40
        again = reference.streamed_logits(hf_dir, tmp_path, c, q, hf_arch, sequences)
    finally:
        reference.LM_HEAD_ROWS = saved
    assert all(np.array_equal(a, b) for a, b in zip(again, streamed))


def test_cpu_library_pins_its_baseline_and_records_it():
    from builders.backends.mlc.cpu_features import BASELINES
    from builders.backends.mlc.steps import _requires_cpu
    from builders.backends.mlc.targets import CPU_BASELINE, TARGETS

    cpu = TARGETS["cpu"]
    assert cpu.tvm["mcpu"] == CPU_BASELINE == cpu.requires_cpu == "x86-64-v3"
    assert {"avx2", "fma", "f16c"} <= set(BASELINES[CPU_BASELINE])
    assert _requires_cpu(cpu) == {"baseline": "x86-64-v3", "features": list(BASELINES["x86-64-v3"])}
    assert all(t.requires_cpu is None for name, t in TARGETS.items() if name != "cpu")


def test_a_host_without_the_baseline_gets_one_line_naming_what_it_lacks(tmp_path):
    from builders.backends.mlc import cpu_features
    from builders.errors import NodeFailed

    v3 = set(cpu_features.BASELINES["x86-64-v3"])
    cpu_features.check("x86-64-v3", "m-q4f16_1-cpu.so", flags=v3 | {"avx512f"}, machine="x86_64")  # passes
    with pytest.raises(NodeFailed) as err:
        cpu_features.check("x86-64-v3", "m-q4f16_1-cpu.so", flags=v3 - {"avx2", "f16c"}, machine="x86_64")
    msg = str(err.value)
    assert "\n" not in msg and "m-q4f16_1-cpu.so" in msg and "x86-64-v3" in msg and "avx2, f16c" in msg
    with pytest.raises(NodeFailed, match="an x86_64 CPU \\(this host is aarch64\\)"):
        cpu_features.check("x86-64-v3", "m.so", flags=v3, machine="aarch64")
    with pytest.raises(NodeFailed, match="unknown CPU baseline 'x86-64-v9'"):
        cpu_features.check("x86-64-v9", "m.so")
    cpu_features.check(None, "m.so", flags=set())  # no baseline pinned: nothing to check
    # the host's flags are read from /proc/cpuinfo's first "flags" line
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\nflags\t\t: other\n")
    assert cpu_features.host_flags(info) == {"fpu", "sse", "avx2", "fma"}
    assert cpu_features.host_flags(tmp_path / "none") == set()


def test_phi3_chat_config_uses_mlcs_phi3_template(hf_dir, phi3_dir, tmp_path):
    import shutil

    from builders.backends.mlc import gen_config

    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf_dir / name, phi3_dir / name)
    c = ModelConfig.from_hf(PHI3_CFG, {"context_window_size": 128})
    cfg = gen_config.chat_config(phi3_dir, PHI3_CFG, c, q_mod.QUANTS["q4f16_1"], None)
    conv = cfg["conv_template"]
    assert cfg["model_type"] == "phi3" and conv["name"] == "phi-3"
    assert conv["roles"] == {"user": "<|user|>", "assistant": "<|assistant|>"} and conv["seps"] == ["<|end|>\n"]
    assert conv["system_prefix_token_ids"] == [1] and conv["stop_token_ids"] == [2]  # the model's bos / eos


@pytest.mark.parametrize("code", ["q4f16_1", "q4f32_1", "q4f16_0"])
def test_quantize_in_row_blocks_equals_one_pass(code, monkeypatch):
    """quantize() works ROW_BLOCK rows at a time (bounded temporaries): the same bytes as one pass."""
    q = q_mod.QUANTS[code]
    w = np.random.default_rng(3).normal(size=(70, 96)).astype(np.float32)
    whole = q_mod.quantize(w, q)
    monkeypatch.setattr(q_mod, "ROW_BLOCK", 16)
    blocked = q_mod.quantize(w, q)
    for a, b in zip(whole, blocked):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_safetensors_source_reads_what_safetensors_reads(dtype, tmp_path):
    """The converter's positioned reads (no memory map) give safetensors' own tensors, widened to float32."""
    import torch
    from safetensors.torch import save_file

    from builders.backends.mlc.convert_weight import SafetensorsSource

    tensors = {"a.weight": torch.randn(33, 17).to(getattr(torch, dtype)), "b": torch.randn(5).to(getattr(torch, dtype))}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    src = SafetensorsSource(tmp_path)
    for name, t in tensors.items():
        got = src.get(name)
        assert got.dtype == np.float32 and np.array_equal(got, t.float().numpy())
    with pytest.raises(Exception, match="not found"):
        src.get("nope")


@pytest.mark.parametrize("code, arch", [("q4f16_1", "llama"), ("q4f16_0", "llama"), ("q0f16", "phi3"),
                                        ("q4f16_1", "phi3")])
def test_convert_in_row_blocks_writes_the_same_bytes(request, tmp_path, code, arch, monkeypatch):
    """convert() reads and quantizes every parameter ROW_BLOCK checkpoint rows at a time (no float32 copy of
    a whole vocabulary table): blocks that split the tables and the fused q/k/v rows give the same shards."""
    from builders.backends.mlc import convert_weight

    hf_dir, cfg = _checkpoint(request, arch)
    hf_arch = cfg["architectures"][0]
    q = q_mod.QUANTS[code]
    c = ModelConfig.from_hf(cfg, {"context_window_size": 128})
    (tmp_path / "whole").mkdir()
    convert_weight.convert(hf_dir, tmp_path / "whole", c, q, hf_arch, log=lambda *_: None)
    monkeypatch.setattr(q_mod, "ROW_BLOCK", 7)
    (tmp_path / "blocks").mkdir()
    convert_weight.convert(hf_dir, tmp_path / "blocks", c, q, hf_arch, log=lambda *_: None)
    assert (tmp_path / "whole/tensor-cache.json").read_text() == (tmp_path / "blocks/tensor-cache.json").read_text()
    shards = sorted(p.name for p in (tmp_path / "whole").glob("*.bin"))
    assert shards and all((tmp_path / "whole" / s).read_bytes() == (tmp_path / "blocks" / s).read_bytes() for s in shards)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_source_rows_are_the_rows_of_the_whole_parameter(request, arch):
    """source_tensor(rows=...) reads only those rows, across the checkpoint tensors a parameter is made of
    (Llama's q/k/v concatenated; Phi-3's stored fused), and equals slicing the whole parameter."""
    from builders.backends.mlc import convert_weight
    from builders.backends.mlc.models import parameters

    hf_dir, cfg = _checkpoint(request, arch)
    src = convert_weight.SafetensorsSource(hf_dir)
    for param in parameters(ModelConfig.from_hf(cfg, {}), cfg["architectures"][0]):
        whole = convert_weight.source_tensor(src, param)
        assert whole.shape == param.shape
        n = param.shape[0]
        for rows in (slice(0, 1), slice(3, n - 2), slice(n - 5, n), slice(n, n)):
            assert np.array_equal(convert_weight.source_tensor(src, param, rows), whole[rows]), (param.name, rows)


def test_lm_head_row_blocks_tile_the_vocabulary_in_equal_vector_blocks():
    """The library dequantizes a vocabulary-sized matrix in row blocks (models/dequant_blocks.py): they tile
    the rows exactly, fit DEQUANT_ROWS, and are equal multiples of VEC_ROWS where the count allows it."""
    from builders.backends.mlc.models.dequant_blocks import DEQUANT_ROWS, VEC_ROWS, row_blocks

    for rows, equal in ((96, True), (151936, True), (128256, True), (32064, True), (50257, False)):
        blocks = row_blocks(rows)
        assert [s for s, _ in blocks] == [sum(n for _, n in blocks[:i]) for i in range(len(blocks))]
        assert sum(n for _, n in blocks) == rows and all(n <= DEQUANT_ROWS for _, n in blocks)
        assert (len({n for _, n in blocks}) == 1) == equal
        if len(blocks) > 1 and equal:
            assert blocks[0][1] % VEC_ROWS == 0
    assert row_blocks(151936) == [(i * 18992, 18992) for i in range(8)]  # Qwen2.5: 8 blocks, not 10 unequal ones
