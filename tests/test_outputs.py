"""Declared node outputs: every backend's nodes declare them, a run missing one (or writing nothing) is
refused; the out/ fingerprint the runner keys its state on. Fast: no docker."""

import pytest

from builders import backends
from builders.backends.base import Cell, ModelRef
from builders.models import nodes as model_nodes
from builders.models.tiny import tiny_config
from builders.outputs import check_declared, fingerprint, missing_outputs

CELLS = [("gguf", "F16", "cpu"), ("gguf", "Q4_K_M", "android"), ("mlc", "q4f16_1", "android"),
         ("mlc", "q0f32", "cpu"), ("mlc", "q4f16_1", "webgpu"), ("mlc", "q4f16_1", "cuda"),
         ("coreml", "fp16", "ane"), ("coreml", "lut6_4", "ane")]


def model() -> ModelRef:
    c = tiny_config("llama")
    return ModelRef("tiny-llama", "tiny:llama", "tiny-x", "d" * 64, c, c["architectures"][0], node="tiny-llama.model")


@pytest.mark.parametrize("backend, quant, target", CELLS)
def test_every_node_of_every_backend_declares_its_outputs(backend, quant, target):
    be = backends.get(backend)
    cell = Cell("tiny-llama", backend, quant, target, be.normalize_options({}, "test"))
    for nd in be.expand(cell, model()):
        assert nd.outputs, f"{nd.key} declares no outputs"


def test_declarations_name_the_files_the_steps_write():
    mlc = backends.get("mlc")
    cell = Cell("tiny-llama", "mlc", "q4f16_1", "android", mlc.normalize_options({}, "t"))
    nodes = mlc.expand(cell, model())  # weights, the cpu library that runs them, the android library
    weights, (compiled, lib) = nodes[0], nodes[-2:]
    assert weights.outputs == ("tensor-cache.json", "params_shard_*.bin", "mlc-chat-config.json")
    assert compiled.outputs == (f"{compiled.params['lib_stem']}.tar", "library.json")
    assert lib.outputs == ("tiny-llama-q4f16_1-ctx512-android.tar",)
    coreml = backends.get("coreml")
    (node,) = coreml.expand(Cell("tiny-llama", "coreml", "fp16", "ane", coreml.normalize_options({}, "t")), model())
    assert node.outputs == ("llama_embeddings.mlpackage/Manifest.json", "llama_lm_head.mlpackage/Manifest.json",
                            "llama_FFN_PF_chunk_01of01.mlpackage/Manifest.json", "meta.yaml")
    assert model_nodes.tiny_node("llama").outputs == ("config.json", "*.safetensors", "tokenizer.model",
                                                      "tokenizer.json")
    assert model_nodes.reference_node("m").outputs == ("reference.npz", "reference.json")


def listing(*paths):
    return [{"path": p, "size": 1, "sha256": "x"} for p in paths]


def test_check_declared_refuses_nothing_and_missing_files():
    assert "produced no outputs" in check_declared([], ("*.gguf",), "gguf-convert")
    assert check_declared(listing("m-F16.gguf"), ("*.gguf",), "gguf-convert") is None
    why = check_declared(listing("reference.json"), ("reference.npz", "reference.json"), "reference")
    assert why.startswith("the node did not produce reference.npz (declared outputs of reference)")
    assert "declares no outputs" in check_declared(listing("a"), (), "x")
    assert missing_outputs(["p.mlpackage/Data/w.bin", "p.mlpackage/Manifest.json"],
                           ("*.mlpackage/Manifest.json", "meta.yaml")) == ["meta.yaml"]


def test_fingerprint_changes_with_names_and_content(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    empty = fingerprint(out)
    (out / "a").write_text("1")
    one = fingerprint(out)
    assert one != empty and fingerprint(tmp_path / "absent") == empty
    (out / "a").write_text("2")
    assert fingerprint(out) != one
    (out / "a").rename(out / "b")
    assert fingerprint(out) not in (one, empty)
