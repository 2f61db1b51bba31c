"""The numpy checker's LUT dequantization (milrun.lut_dense, LutWeight) against a plain per-element
reading of constexpr_lut_to_dense: value = lut[group of each axis..., index], groups of equal size."""

import itertools

import numpy as np
import pytest

from builders.backends.coreml import milrun


def _naive(indices, lut):
    table = lut[..., 0]
    size = [n // table.shape[i] for i, n in enumerate(indices.shape)]
    out = np.empty(indices.shape, table.dtype)
    for pos in itertools.product(*map(range, indices.shape)):
        out[pos] = table[tuple(p // s for p, s in zip(pos, size)) + (indices[pos],)]
    return out


CASES = [((16, 6, 1, 1), (4, 1, 1, 1, 16, 1)),  # a conv weight, per_grouped_channel on axis 0 (groups of 4)
         ((8, 6), (4, 3, 4, 1)),  # groups on both axes
         ((12, 5), (1, 1, 64, 1))]  # one LUT for the whole weight


@pytest.mark.parametrize("shape, lut_shape", CASES)
def test_blocks_of_rows_give_the_per_element_values(shape, lut_shape, monkeypatch):
    rng = np.random.RandomState(0)
    indices = rng.randint(0, lut_shape[-2], size=shape).astype(np.uint8)
    lut = rng.randn(*lut_shape).astype(np.float16)
    want = _naive(indices, lut)
    monkeypatch.setattr(milrun, "LUT_BLOCK", 2 * int(np.prod(shape[1:])) + 1)  # several blocks, uneven
    got = milrun.lut_dense(indices, lut)
    assert got.dtype == np.float16 and got.tobytes() == want.tobytes()
    assert milrun.lut_dense(indices, lut, 3, 7).tobytes() == want[3:7].tobytes()
    lazy = milrun.LutWeight(indices, lut)
    ids = np.array([[5, 0, 5, shape[0] - 1]])
    assert lazy.take_rows(ids).tobytes() == want[ids].tobytes()
    out = milrun.op_gather({"x": lazy, "indices": ids, "axis": 0}, None)
    assert out.shape == ids.shape + shape[1:] and out.tobytes() == want[ids].tobytes()
    assert milrun.op_gather({"x": lazy, "indices": np.array([1, -1]), "axis": 1}, None).tobytes() == \
        np.take(want, [1, shape[1] - 1], axis=1).tobytes()


def test_a_vector_lut_is_refused_by_name():
    with pytest.raises(milrun.UnsupportedOp, match="vector_axis"):
        milrun.lut_dense(np.zeros((4, 2), np.uint8), np.zeros((1, 1, 4, 2), np.float16))
