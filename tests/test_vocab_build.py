"""Real-vocabulary tiny models end to end (real Docker engine, real images): each one is generated in the
gguf image (tokenizer rebuilt from llama.cpp's ggml-vocab GGUF), gets its reference, and builds through
gguf, mlc and coreml; every artifact node passes the tokenizer check (the prompts tokenized with what it
ships, BOS/EOS included, equal the original tokenizer's ids) and carries the right BOS/EOS. One build per
model (module scope), shared by its assertions."""

import json

import pytest
import yaml

from helpers import invoke, manifests

pytestmark = [pytest.mark.docker, pytest.mark.fresh_store]

# model -> (bos id the tokenizer adds or None, eos id, llama.cpp add_bos_token in the GGUF)
MODELS = {
    "llama3-vocab": (128000, 128001, "true"),
    "qwen2-vocab": (None, 151643, "false"),
    "llama2-vocab": (1, 2, "true"),
}
# every backend, the quants the brief asks for; mlc on cpu (run), coreml for the ANE (checked on Linux)
FULL = ("--backends", "gguf,mlc,coreml", "--quants", "F16,Q8_0,Q4_K_M,q0f32,q4f16_1,fp16,lut6_4",
        "--targets", "cpu,ane")
# the other two models: one quant per backend (the tokenizer does not depend on the quant), the MLC
# library for android (compiled and checked structurally): the MLC tokenizer check runs in the weights
# node, and running a 128k-vocab library on the CPU costs minutes (measured 584 s under load)
SMALL = ("--backends", "gguf,mlc,coreml", "--quants", "Q4_K_M,q4f16_1,fp16", "--targets", "android,ane")
ARGS = {"qwen2-vocab": FULL, "llama3-vocab": SMALL, "llama2-vocab": SMALL}

_built: dict = {}


@pytest.fixture(scope="module")
def built(tmp_path_factory, docker_engine):
    def get(arch):
        if arch not in _built:
            out = tmp_path_factory.mktemp(arch)
            proc = invoke("build", "--model", f"tiny:{arch}", *ARGS[arch], "--out", str(out))
            _built[arch] = (out, proc, manifests(out))
        return _built[arch]
    return get


def _artifact_nodes(ms, arch):
    return {k: m for k, m in ms.items() if k.startswith(f"tiny-{arch}.") and m["node"]["kind"] in
            ("gguf-convert", "gguf-quantize", "mlc-weights", "coreml")}


def _store_file(out, m, name):
    return out / ".store" / m["node"]["digest"] / "out" / name


@pytest.mark.parametrize("arch", list(MODELS))
def test_every_artifact_passes_the_tokenizer_check(built, arch):
    out, proc, ms = built(arch)
    nodes = _artifact_nodes(ms, arch)
    kinds = {m["node"]["kind"] for m in nodes.values()}
    assert {"gguf-convert", "mlc-weights", "coreml"} <= kinds, (sorted(ms), proc.stdout[-3000:], proc.stderr[-3000:])
    for key, m in nodes.items():
        tok = m["verification"]["checks"]["tokenizer"]
        assert tok["passed"] and tok["texts"] == 7 and tok["mismatches"] == [], (key, tok)
        assert tok["eos_token_id"]["reference"] == MODELS[arch][1] and MODELS[arch][1] in tok["eos_token_id"]["artifact"]
        assert tok["bos_token_id"]["reference_adds_bos"] == (MODELS[arch][0] is not None)


@pytest.mark.parametrize("arch", list(MODELS))
def test_bos_eos_in_every_artifact(built, arch):
    out, _, ms = built(arch)
    bos, eos, gguf_add_bos = MODELS[arch]
    for key, m in _artifact_nodes(ms, arch).items():
        kind = m["node"]["kind"]
        if kind.startswith("gguf"):
            f = m["verification"]["checks"]["tokenizer"]["file"]
            assert f["add_bos_token"] == gguf_add_bos and int(f["eos_token_id"]) == eos, (key, f)
        elif kind == "mlc-weights":
            cfg = json.loads(_store_file(out, m, "mlc-chat-config.json").read_text())
            assert cfg["conv_template"]["system_prefix_token_ids"] == ([bos] if bos is not None else None), key
            assert eos in cfg["conv_template"]["stop_token_ids"]
        else:
            section = yaml.safe_load(_store_file(out, m, "meta.yaml").read_text())["tokenizer"]
            assert section["add_bos_token"] == (bos is not None) and eos in section["stop_token_ids"], (key, section)
            if bos is not None:
                assert section["bos_token_id"] == bos


@pytest.mark.parametrize("arch", list(MODELS))
def test_model_node_rebuilt_the_real_tokenizer(built, arch):
    _, _, ms = built(arch)
    m = ms[f"tiny-{arch}.model"]
    assert m["node"]["kind"] == "tiny-vocab-model" and m["image"]["ref"].startswith("buildmatrix/gguf:")
    files = {o["path"] for o in m["outputs"]}
    assert {"tokenizer.json", "tokenizer_config.json", "model.safetensors", "config.json"} <= files
    assert ("tokenizer.model" in files) == (arch == "llama2-vocab")


def test_qwen2_full_matrix(built):
    """tiny:qwen2-vocab through every quant asked: all cells build and verify (reference greedy decode kept
    inside the 151646 tokenizer ids of a 151936 config vocab)."""
    out, proc, ms = built("qwen2-vocab")
    ref = json.loads((out / ".store" / ms["tiny-qwen2-vocab.reference"]["node"]["digest"] / "out" /
                      "reference.json").read_text())
    assert ref["greedy_argmax_ids"] == 151646 and ref["config_vocab_size"] == 151936
    for cell in ("gguf.F16", "gguf.Q8_0", "gguf.Q4_K_M", "mlc.q0f32.weights", "mlc.q4f16_1.weights",
                 "mlc.q0f32.lib.cpu", "mlc.q4f16_1.lib.cpu", "coreml.fp16.ane"):
        assert f"tiny-qwen2-vocab.{cell}" in ms, (cell, proc.stdout[-4000:])
        assert ms[f"tiny-qwen2-vocab.{cell}"]["verification"]["passed"], cell


def test_qwen2_coreml_lut_cell(built):
    """The 151936-row LM head is split in parts that are multiples of the LUT group, so every part really is
    palettized: the node fails closed when coremltools leaves a weight in fp16."""
    out, proc, ms = built("qwen2-vocab")
    assert "tiny-qwen2-vocab.coreml.lut6_4.ane" in ms and proc.returncode == 0, proc.stdout[-2000:]
