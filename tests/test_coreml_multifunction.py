"""coreml backend, host side: the file-level multifunction writer (builders/backends/coreml/multifunction.py)
held to coremltools' own save_multifunction on the same single-function packages - same function
descriptions, same ops, the same values behind every weight, identical outputs of the numpy checker - and
its bad inputs failing the node with a named reason."""

import shutil
import struct

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from builders.backends.coreml import convert, milrun, multifunction, package, runtime  # noqa: E402
from builders.errors import NodeFailed  # noqa: E402

CONTEXT, BATCH = 32, 8


@pytest.fixture(scope="module")
def chunks(tmp_path_factory):
    """A 3-layer random Llama's chunks: decode and prefill of layers 0-1, prefill of layer 2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=False)
    d = tmp_path_factory.mktemp("mf")
    LlamaForCausalLM(cfg).save_pretrained(d / "model")
    src = convert.Source(d / "model", CONTEXT)
    paths = {"ffn": d / "ffn.mlpackage", "pf": d / "pf.mlpackage", "pf2": d / "pf2.mlpackage"}
    convert.save(convert.chunk(src, range(2), False, 1), paths["ffn"])
    convert.save(convert.chunk(src, range(2), False, BATCH), paths["pf"])
    convert.save(convert.chunk(src, range(2, 3), True, BATCH), paths["pf2"])
    return d, paths


def _coremltools_combine(infer, prefill, out):
    desc = ct.utils.MultiFunctionDescriptor()
    desc.add_function(str(infer), src_function_name="main", target_function_name="infer")
    desc.add_function(str(prefill), src_function_name="main", target_function_name="prefill")
    desc.default_function_name = "infer"
    ct.utils.save_multifunction(desc, str(out))
    package.normalize_package(out)  # what step 5 did after save_multifunction (deterministic UUIDs, date)


def _both(d, paths, prefill, tag):
    ours, theirs = d / f"ours-{tag}.mlpackage", d / f"ct-{tag}.mlpackage"
    multifunction.combine([("infer", paths["ffn"]), ("prefill", paths[prefill])], "infer", ours)
    _coremltools_combine(paths["ffn"], paths[prefill], theirs)
    return milrun.Package(ours), milrun.Package(theirs)


def _program_without_debug_names(spec):
    """The ML program with the state ops' `name` attributes removed: coremltools' pymil round trip renames
    them (coreml_update_state_4_write_state -> ..._0_...), the only difference it makes to the ops."""
    from coremltools.proto import Model_pb2

    s = Model_pb2.Model()
    s.CopyFrom(spec)
    for f in s.mlProgram.functions.values():
        for op in f.block_specializations[f.opset].operations:
            if op.type in ("read_state", "write_state"):
                del op.attributes["name"]
    return s.mlProgram


def _weights(pkg):
    return (pkg.path / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()


def _const_values(pkg, function):
    block, _ = pkg.block(function)
    return {op.outputs[0].name: pkg.value(op.attributes["val"]) for op in block.operations
            if op.type == "const" and op.attributes["val"].HasField("blobFileValue")}


def _run(pkg, function, seq, seed):
    fn = milrun.Function(pkg, function)
    rng = np.random.RandomState(seed)
    inputs = {"hidden_states": rng.randn(1, seq, 64).astype(np.float16),
              "position_ids": np.arange(seq, dtype=np.int32), "causal_mask": runtime.causal_mask(0, seq, CONTEXT),
              "current_pos": np.array([0], np.int32)}
    state = fn.new_state()
    return fn(inputs, state)["output_hidden_states"], state["kv_cache"]


def test_equal_weights_the_package_is_coremltools_own(chunks):
    """FFN and prefill of the same layers (what step 5 combines): the same weight file byte for byte
    (the FFN's, nothing appended), manifest, descriptions and programs as save_multifunction's."""
    d, paths = chunks
    ours, theirs = _both(d, paths, "pf", "same")
    ffn_weights = (paths["ffn"] / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()
    assert _weights(ours) == _weights(theirs) == ffn_weights
    assert (ours.path / "Manifest.json").read_text() == (theirs.path / "Manifest.json").read_text()
    assert ours.spec.specificationVersion == theirs.spec.specificationVersion
    assert ours.spec.description == theirs.spec.description
    assert ours.spec.description.defaultFunctionName == "infer"
    assert _program_without_debug_names(ours.spec) == _program_without_debug_names(theirs.spec)
    assert ours.spec.mlProgram != theirs.spec.mlProgram  # not vacuous: the debug names are what differs
    for function, seq in (("infer", 1), ("prefill", BATCH)):
        for a, b in zip(_run(ours, function, seq, 1), _run(theirs, function, seq, 1)):
            assert a.tobytes() == b.tobytes()


def test_different_weights_are_appended_and_equal_ones_stored_once(chunks):
    """A prefill chunk of other layers: its own weights are appended after the FFN's, the ones equal to
    the FFN's (rope tables) point at the FFN's blob; every weight reads back as in save_multifunction's."""
    d, paths = chunks
    ours, theirs = _both(d, paths, "pf2", "other")
    assert len(_weights(ours)) == len(_weights(theirs))  # the same deduplication
    ffn_size = len((paths["ffn"] / "Data/com.apple.CoreML/weights/weight.bin").read_bytes())
    assert len(_weights(ours)) > ffn_size
    count = struct.unpack("<I", _weights(ours)[:4])[0]
    assert count == struct.unpack("<I", _weights(theirs)[:4])[0]
    assert ours.spec.description == theirs.spec.description
    for function in ("infer", "prefill"):
        mine, want = _const_values(ours, function), _const_values(theirs, function)
        assert sorted(mine) == sorted(want) and mine
        for name in want:
            assert mine[name].dtype == want[name].dtype and mine[name].tobytes() == want[name].tobytes(), name
    shared = {int(b.offset) for b in multifunction.blob_values(ours.spec.mlProgram.functions["infer"])} & \
        {int(b.offset) for b in multifunction.blob_values(ours.spec.mlProgram.functions["prefill"])}
    assert shared, "the rope tables are stored once for both functions"
    for a, b in zip(_run(ours, "prefill", BATCH, 2), _run(theirs, "prefill", BATCH, 2)):
        assert a.tobytes() == b.tobytes()


def test_a_multifunction_input_or_a_damaged_weight_file_fails_the_node(chunks, tmp_path):
    d, paths = chunks
    multi = tmp_path / "multi.mlpackage"
    multifunction.combine([("infer", paths["ffn"]), ("prefill", paths["pf"])], "infer", multi)
    with pytest.raises(NodeFailed, match="multi.mlpackage is not a single-function ML program"):
        multifunction.combine([("infer", multi), ("prefill", paths["pf"])], "infer", tmp_path / "x.mlpackage")
    damaged = tmp_path / "damaged.mlpackage"
    shutil.copytree(paths["pf2"], damaged)
    w = damaged / "Data/com.apple.CoreML/weights/weight.bin"
    data = bytearray(w.read_bytes())
    data[64:68] = b"\0\0\0\0"  # the first blob's sentinel
    w.write_bytes(bytes(data))
    out = tmp_path / "y.mlpackage"
    with pytest.raises(NodeFailed, match="damaged.mlpackage: no blob at offset 64 .* damaged"):
        multifunction.combine([("infer", paths["ffn"]), ("prefill", damaged)], "infer", out)
    assert not out.exists(), "no half-written package under the final name"


def test_palettized_chunks_share_their_luts_in_the_file_and_in_the_checker(chunks, tmp_path):
    """LUT 6,4 FFN and prefill chunks (step 4 reads step 3's k-means results from the cache): the combined
    weight file is the FFN's alone (indices and tables stored once), and the checker dequantizes each
    weight once for both functions, keeping no index blob."""
    from builders.backends.coreml import checks
    from builders.backends.coreml.palettize import palettize_package

    d, paths = chunks
    lut = {}
    for name in ("ffn", "pf"):
        lut[name] = tmp_path / f"{name}-lut.mlpackage"
        palettize_package(paths[name], lut[name], 6, 4, ("conv",), workers=1, cache=tmp_path / "lut-cache")
    out = tmp_path / "ffn_pf-lut.mlpackage"
    multifunction.combine([("infer", lut["ffn"]), ("prefill", lut["pf"])], "infer", out)
    assert _weights(milrun.Package(out)) == (lut["ffn"] / "Data/com.apple.CoreML/weights/weight.bin").read_bytes()
    pkg = milrun.Package(out)
    infer, prefill = milrun.load(out, "infer", pkg), milrun.load(out, "prefill", pkg)
    names = list(checks.lut_ops(pkg, "infer"))
    assert len(names) == 14  # 7 projections x 2 layers
    for n in names:
        assert infer._consts[n] is prefill._consts[n] and infer._consts[n].dtype == np.float16
    assert all(v.dtype != np.uint8 for v in pkg._blobs.values())
    for a, b in zip(_run(pkg, "prefill", BATCH, 3), _run(milrun.Package(lut["pf"]), "main", BATCH, 3)):
        assert a.tobytes() == b.tobytes()
    # the same packages with every LUT weight left packed in the weight file (what the checker does for the
    # LM head): the packed indices are the ones coremltools' blob reader unpacks, and a function run with
    # weights dequantized per block of rows gives the dense run's outputs
    packed = milrun.Package(out, lazy_luts=True)
    weights = dict(checks.lut_weights(packed, "infer"))
    unpacked = checks.lut_ops(pkg, "infer")
    assert sorted(weights) == sorted(unpacked)
    assert all(isinstance(w.indices, milrun.PackedIndices) for w in weights.values())
    for n, w in weights.items():
        assert w.index_rows(0, w.shape[0]).tobytes() == unpacked[n][0].astype(np.uint8).tobytes()
        assert w.dense().tobytes() == prefill._consts[n].tobytes()
    for a, b in zip(_run(packed, "prefill", BATCH, 3), _run(pkg, "prefill", BATCH, 3)):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), rtol=0, atol=2e-3)
