"""coreml backend, host side: what keeps the palettizing process's memory bounded - weights read with
positioned reads instead of coremltools' whole-file map, replaced fp16 weights dropped during the pass,
no torch import - gives the same package, byte for byte, as coremltools' own loading."""

import subprocess
import sys

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
torch = pytest.importorskip("torch")

from builders.backends.coreml import checks, convert, milrun, multifunction  # noqa: E402
from builders.backends.coreml.palettize import palettize_package  # noqa: E402
from helpers import ROOT  # noqa: E402


@pytest.fixture(scope="module")
def fp16_chunk(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=False)
    d = tmp_path_factory.mktemp("pal")
    LlamaForCausalLM(cfg).save_pretrained(d / "model")
    convert.save(convert.chunk(convert.Source(d / "model", 32), range(2), True, 1), d / "ffn.mlpackage")
    return d / "ffn.mlpackage"


def test_positioned_blob_reads_equal_coremltools_reader(fp16_chunk):
    from coremltools.libmilstoragepython import _BlobStorageReader

    path = fp16_chunk / "Data/com.apple.CoreML/weights/weight.bin"
    reader = _BlobStorageReader(str(path))
    offsets = {int(b.offset) for b in multifunction.blob_values(milrun.Package(fp16_chunk).spec.mlProgram)}
    assert len(offsets) > 10
    for off in sorted(offsets):
        mine = milrun.read_blob(path, off, np.float16)
        assert mine.tobytes() == np.asarray(reader.read_fp16_data(off)).tobytes()
    with pytest.raises(ValueError, match="no weight blob at offset 8"):
        milrun.read_blob(path, 8, np.float16)


PLAIN = """
import sys
from pathlib import Path
from builders.backends.coreml import palettize
palettize._read_blobs_without_a_map = lambda: None
palettize._drop_replaced_weights = lambda: None
palettize.run(Path(sys.argv[1]), Path(sys.argv[2]), 6, 4, 2, ["conv"])
"""


def test_light_loading_gives_coremltools_own_package(fp16_chunk, tmp_path):
    light, plain = tmp_path / "light.mlpackage", tmp_path / "plain.mlpackage"
    palettize_package(fp16_chunk, light, 6, 4, ("conv",), workers=2)
    subprocess.run([sys.executable, "-c", PLAIN, str(fp16_chunk), str(plain)], cwd=ROOT, check=True,
                   capture_output=True)
    assert checks.tree_hash(light) == checks.tree_hash(plain)
    assert len(checks.lut_ops(milrun.Package(light))) == 14  # not vacuous: every projection palettized
