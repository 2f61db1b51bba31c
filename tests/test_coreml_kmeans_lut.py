"""kmeans_lut.grouped_lut (the vectorised per-group k-means palettize.py uses) against coremltools'
optimal 1-D k-means (kmeans1d), group by group, and through coremltools' palettizer."""

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")

from builders.backends.coreml import kmeans_lut  # noqa: E402

BITS, GROUP = 6, 4


def _kmeans1d_sse(w: np.ndarray) -> float:
    """Squared error of coremltools' optimal 1-D k-means, one group of GROUP rows at a time, with its
    centroids rounded to the weight's fp16 as coremltools stores them."""
    from coremltools._deps import _kmeans1d

    total = 0.0
    for g in range(0, w.shape[0], GROUP):
        part = w[g:g + GROUP].ravel()
        values, inverse, counts = np.unique(part, return_inverse=True, return_counts=True)
        r = _kmeans1d.cluster(values, min(1 << BITS, len(values)), weights=counts)
        lut = np.asarray(r.centroids).astype(np.float16).astype(np.float64)
        total += float(((lut[np.asarray(r.clusters)[inverse.ravel()]] - part) ** 2).sum())
    return total


def _sse(w: np.ndarray, lut: np.ndarray, idx: np.ndarray) -> float:
    table = lut.astype(np.float64).repeat(GROUP, axis=0)
    return float(((np.take_along_axis(table, idx.reshape(w.shape[0], -1).astype(np.int64), axis=1)
                   - w.reshape(w.shape[0], -1)) ** 2).sum())


@pytest.mark.parametrize("dist,cols,limit", [("normal", 896, 1.03), ("laplace", 896, 1.04), ("normal", 4864, 1.03)])
def test_error_is_within_a_few_percent_of_the_optimal_kmeans(dist, cols, limit):
    rng = np.random.RandomState(7)
    groups = 24 if cols == 896 else 6
    w = (getattr(rng, dist)(size=(GROUP * groups, cols)) * 0.02).astype(np.float16)
    lut, idx = kmeans_lut.grouped_lut(w, BITS, GROUP)
    assert lut.shape == (groups, 1 << BITS) and lut.dtype == np.float16
    assert idx.shape == w.shape and idx.dtype == np.uint8 and int(idx.max()) < 1 << BITS
    ours, best = _sse(w, lut, idx), _kmeans1d_sse(w)
    assert best <= ours * (1 + 1e-9)  # kmeans1d is the optimum: a result below it would be a measuring error
    assert ours <= limit * best, (ours / best, dist, cols)


def test_blocks_workers_shares_and_few_distinct_values():
    rng = np.random.RandomState(1)
    w = (rng.randn(GROUP * 40, 96) * 0.05).astype(np.float16)
    w[:GROUP] = 0.25  # one value: reconstructed exactly
    w[GROUP:2 * GROUP] = rng.choice([-1.0, 0.5, 2.0], size=(GROUP, 96))  # fewer values than LUT entries
    whole = kmeans_lut.grouped_lut(w, BITS, GROUP)
    small_blocks = kmeans_lut.BLOCK_VALUES
    try:
        kmeans_lut.BLOCK_VALUES = 3 * GROUP * 96  # 3 groups per block: block edges inside the weight
        blocked = kmeans_lut.grouped_lut(w, BITS, GROUP)
    finally:
        kmeans_lut.BLOCK_VALUES = small_blocks
    shares = [kmeans_lut.grouped_lut(w, BITS, GROUP, (a, b)) for a, b in ((0, 17), (17, 40))]  # a worker's share
    for lut, idx in (blocked, tuple(np.concatenate(x) for x in zip(*shares))):
        assert np.array_equal(lut, whole[0]) and np.array_equal(idx, whole[1])
    lut, idx = whole
    deq = np.take_along_axis(lut.repeat(GROUP, axis=0), idx.astype(np.int64), axis=1)
    assert np.array_equal(deq[:2 * GROUP], w[:2 * GROUP])
    with pytest.raises(ValueError, match="not a multiple of the LUT group"):
        kmeans_lut.grouped_lut(w[:6], BITS, GROUP)
