"""builders/gguf_file.py, the GGUF header reader the checks use instead of gguf-py's GGUFReader.

Without Docker: one-line errors for what is not GGUF (a real vocabulary: test_vocab_models.py).
With Docker (the gguf image has gguf-py): every key/value and every tensor's bytes, shape and type
equal GGUFReader's on a file gguf-py's own writer made with plain and block-quantized tensors."""

import struct
from pathlib import Path

import pytest

from builders import gguf_file
from builders.images import ensure


@pytest.mark.parametrize("content, says", [
    (b"", "empty file"),
    (b"GGML" + bytes(40), "not a GGUF file"),
    (b"GGUF" + struct.pack("<I", 1) + bytes(16), "version 1 not supported"),
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1000) + b"key", "truncated or malformed"),
])
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, content, says):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(gguf_file.GgufFormatError) as e:
        gguf_file.GgufFile(path)
    assert says in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


SCRIPT = r"""
import numpy as np, sys
import gguf
from gguf.quants import quantize
from builders.gguf_file import GgufFile

path = "/tmp/t.gguf"
w = gguf.GGUFWriter(path, "llama")
w.add_block_count(1)
w.add_string("test.string", "héllo")
w.add_array("test.strings", ["a", "bc", "", "日本"])
w.add_array("test.ints", [1, -2, 3])
w.add_float32("test.f32", 0.25)
w.add_bool("test.bool", True)
rng = np.random.default_rng(0)
x = rng.normal(size=(8, 256)).astype(np.float32)
w.add_tensor("plain.f32", x)
w.add_tensor("plain.f16", x.astype(np.float16))
w.add_tensor("vec", x[0])
for qt in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.BF16, gguf.GGMLQuantizationType.Q4_0):
    w.add_tensor("q." + qt.name, quantize(x, qt), raw_dtype=qt)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

ours, theirs = GgufFile(path), gguf.GGUFReader(path)
for key, field in theirs.fields.items():
    if not key.startswith("GGUF."):
        assert ours.kv[key] == field.contents(), key
assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
for a, b in zip(ours.tensors, theirs.tensors):
    assert a.type == int(b.tensor_type) and ours.type_name(a) == b.tensor_type.name, a.name
    assert ours.data(a).shape == b.data.shape, (a.name, ours.data(a).shape, b.data.shape)
    assert ours.data(a).tobytes() == np.asarray(b.data).tobytes(), a.name
    assert np.array_equal(gguf.quants.dequantize(ours.data(a), b.tensor_type),
                          gguf.quants.dequantize(b.data, b.tensor_type)), a.name
before = [ours.data(a).tobytes() for a in ours.tensors]
for a in ours.tensors:
    ours.release(a)  # pages dropped from the resident set are read back from the file on the next access
assert [ours.data(a).tobytes() for a in ours.tensors] == before
print("equal", len(ours.tensors), len(ours.kv))
"""


@pytest.mark.docker
@pytest.mark.fresh_store  # no seed store: it runs no node
def test_equal_to_gguf_py_reader_on_quantized_file(docker_engine, pins):
    assert _in_gguf_image(docker_engine, pins, SCRIPT).split()[:2] == ["equal", "6"]


def _in_gguf_image(docker_engine, pins, script: str) -> str:
    """stdout of `python -c script` in the gguf image (no network), with this checkout's builders/ importable."""
    ref = ensure(["gguf"], pins)["gguf"]["ref"]
    builders = Path(__file__).resolve().parents[1] / "builders"
    out = docker_engine.containers.run(
        ref, ["python", "-c", script], remove=True, network_mode="none",
        volumes={str(builders): {"bind": "/opt/buildmatrix/builders", "mode": "ro"}},
        environment={"PYTHONPATH": "/opt/buildmatrix"})
    return out.decode()


DEQUANT_SCRIPT = r"""
import numpy as np, gguf
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from builders.verify import fp32_compute, ggml_dequant
rng = np.random.default_rng(0)
done = []
for qt in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
    block, size = GGML_QUANT_SIZES[qt]
    assert ggml_dequant.available(int(qt)), qt.name
    rows = rng.integers(0, 256, size=(24, 4 * size), dtype=np.uint8)  # 24 rows of 4 random blocks each
    # every half-float field of a block is a scale: random bits there give inf/nan; keep them finite by
    # clearing the top exponent bit of every odd byte (harmless in the quant bytes: random either way)
    rows[:, 1::2] &= 0xBF
    ours, theirs = ggml_dequant.dequantize(rows, int(qt)), gguf.quants.dequantize(rows, qt)
    assert ours.shape == theirs.shape == (24, 4 * block), (qt.name, ours.shape, theirs.shape)
    assert np.isfinite(theirs).all(), qt.name
    # the same block formulas; ggml's C may fuse a multiply-add (one rounding less): within 1e-6 of the block
    scale = np.abs(theirs).reshape(24, 4, block).max(-1, keepdims=True)
    err = np.abs(ours - theirs).reshape(24, 4, block) / np.maximum(scale, 1e-30)
    assert err.max() <= 1e-6, (qt.name, float(err.max()))
    done.append(qt.name)
for qt in (T.F16, T.BF16):  # 2-byte floats, as builders.gguf_file gives them: exact
    rows = rng.standard_normal((24, 64)).astype(np.float32)
    data = rows.astype(np.float16) if qt == T.F16 else (rows.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    assert np.array_equal(ggml_dequant.dequantize(data, int(qt)), gguf.quants.dequantize(data, qt)), qt.name
    done.append(qt.name)
assert not ggml_dequant.available(int(T.F32))  # already float32
# a tensor large enough to be split across threads dequantizes to the same values as one call
block, size = GGML_QUANT_SIZES[T.Q4_K]
big = rng.integers(0, 256, size=(301, 16 * size), dtype=np.uint8)
big[:, 1::2] &= 0xBF
assert big.shape[0] * 16 * block >= ggml_dequant.PARALLEL_MIN and fp32_compute.cpu_threads() >= 2
split = ggml_dequant.dequantize(big, int(T.Q4_K))
ggml_dequant.PARALLEL_MIN = 1 << 62
assert np.array_equal(split, ggml_dequant.dequantize(big, int(T.Q4_K)))
print("equal", len(done))
"""


@pytest.mark.docker
@pytest.mark.fresh_store  # no seed store: it runs no node
def test_ggml_dequantizers_equal_gguf_py(docker_engine, pins):
    """The runtime check's dequantized weights (verify/ggml_dequant.py, ggml's C) equal gguf-py's numpy
    dequantization on every block-quantized type the quants use (block by block) and on F16/BF16 (exactly)."""
    assert _in_gguf_image(docker_engine, pins, DEQUANT_SCRIPT).split()[:2] == ["equal", "12"]
