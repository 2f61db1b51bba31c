"""GGUF tensor-type fallback decision and the q/k row un-permutation (no Docker)."""

import numpy as np
import pytest

from builders.backends.gguf import QUANTS
from builders.verify import gguf_types
from builders.verify.gguf_weights import unpermute


def test_every_gguf_quant_has_designed_tensor_types():
    assert set(gguf_types.DESIGNED) == set(QUANTS)


def _tensors(matrix_type, output_type="Q6_K"):
    return [("token_embd.weight", matrix_type, 2), ("output.weight", output_type, 2),
            ("blk.0.attn_q.weight", matrix_type, 2), ("blk.0.ffn_down.weight", matrix_type, 2),
            ("blk.0.attn_norm.weight", "F32", 1), ("output_norm.weight", "F32", 1)]


def test_designed_mix_is_no_fallback():
    assert gguf_types.fallback("Q6_K", _tensors("Q6_K")) is None
    assert gguf_types.fallback("Q4_K_M", _tensors("Q4_K")) is None
    assert gguf_types.fallback("Q4_0", _tensors("Q4_0")) is None
    assert gguf_types.fallback("Q4_0-QAT", _tensors("Q4_0", "Q8_0")) is None


def test_a_q6_k_file_that_is_all_q8_0_is_a_fallback():
    fb = gguf_types.fallback("Q6_K", _tensors("Q8_0", "Q8_0"))
    assert fb == {"asked": "Q6_K", "got": {"Q8_0": 4},
                  "tensors": ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "output.weight", "token_embd.weight"]}
    assert "asked Q6_K" in gguf_types.warning(fb) and "Q8_0 x4" in gguf_types.warning(fb)


def test_one_dimensional_tensors_are_not_counted_and_histogram_is_complete():
    tensors = _tensors("Q5_0", "Q8_0")
    assert gguf_types.histogram(tensors) == {"F32": 2, "Q5_0": 3, "Q8_0": 1}
    fb = gguf_types.fallback("Q4_K_M", tensors)
    assert fb["got"] == {"Q5_0": 3, "Q8_0": 1} and "blk.0.attn_norm.weight" not in fb["tensors"]


def test_unknown_quant_is_refused():
    with pytest.raises(KeyError):
        gguf_types.fallback("Q9_9", [])


def _converter_permute(w, n_head, n_head_kv=None):
    """llama.cpp's LlamaModel.permute (conversion/llama.py), written from its definition."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("n_head, n_kv, shape", [(4, 4, (256, 64)), (5, 1, (64, 320)), (4, 2, (128,))])
def test_unpermute_inverts_the_converters_q_k_row_permutation(n_head, n_kv, shape):
    w = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    stored = _converter_permute(w, n_head, n_kv)
    assert not np.array_equal(stored, w)
    assert np.array_equal(unpermute(stored, n_kv), w)
