"""Scalar k-means LUTs for every channel group of a weight at once (numpy): palettize.py uses it for the
per_grouped_channel LUTs (the FFN, the LM head, the embedding table).

coremltools clusters each group on its own with its kmeans1d (an optimal 1-D k-means: a dynamic
programme, ~50 ms for a group of 4 x 896 weights here), one call per group: a 0.5B model's LM head is
~38,000 groups, its FFN ~100,000 group-equivalents - hours of CPU. Here a block of groups is clustered
together, in three vectorised stages over all groups of the block:
  1. start: each group's values sorted once; centroids spread like an optimal quantizer's (density to the
     power 1/3, from quantile bins: _companded_start);
  2. Lloyd's iterations: a 1-D cluster is a run of consecutive sorted values, so an iteration is one
     batched search of the k - 1 boundaries in the sorted values (shifted into one sorted array once per
     block) and prefix-sum differences; a group whose boundaries did not move is at its fixed point and
     leaves the iterations;
  3. Lloyd stops at a local optimum (on 4 x 896 normal weights 3-6% above kmeans1d's error), so the cuts
     are improved by an exact dynamic programme over a window of DP_WIDTH positions around each cut,
     DP_ROUNDS times (each round is never worse: the old cuts are among its candidates; a group a round
     left unchanged leaves the rounds). The programme's cluster cost is split so that the sum of squares
     of a cluster's end is added after the minimum over its start.
Deterministic (no random start). tests/test_coreml_kmeans_lut.py holds the squared error to kmeans1d's on
normal and Laplace groups (measured on 64 groups of 4 x 896: normal 1.017x, Laplace 1.023x, Student t5
1.061x, t3 1.18x - the heavier the tails, the farther from the optimum). One layer of Qwen2.5-0.5B's
shapes (14.9 M weights, LUT 6,4) takes ~5.6 s on one core (the first version of this module: ~10.8 s).
"""

from __future__ import annotations

import numpy as np

MAX_ITER = 300  # Lloyd iterations at most
DP_WIDTH = 8  # positions each cut may move per round of the windowed programme (_window_dp)
DP_ROUNDS = 6  # rounds of the windowed programme (each never worse than the one before)
EXPONENT = 2 / 3  # see _companded_start
START_BINS = 256  # quantile bins per group for the start (_companded_start)
BLOCK_VALUES = 1 << 19  # values per block of groups; measured on the 0.5B FFN shapes, as fast as 2**22 values,
# whose temporaries (sorted values, prefix sums, shifted rows, ...) took ~190 MiB more per k-means worker


class _SortedRows:
    """Sorted rows [groups, n] searched all at once: per row r, np.searchsorted(rows[r], queries[r]),
    exactly. Every row is shifted by r x a power of two larger than twice its values' magnitude (fp16 values
    are multiples of 2**-24 below 2**16, so the shifted values of a block stay exact in float64) and the
    shifted rows are one sorted array, made once for all of Lloyd's iterations."""

    def __init__(self, rows: np.ndarray, queries_bound: float = 0.0):
        groups, self.n = rows.shape
        bound = max(float(np.abs(rows).max(initial=0.0)), queries_bound)
        self.span = 2.0 ** np.ceil(np.log2(2 * bound + 1))
        self.shift = (np.arange(groups, dtype=np.float64) * self.span)[:, None]
        self.flat = (rows + self.shift).ravel()
        self.base = (np.arange(groups) * self.n)[:, None]

    def search(self, queries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Queries [rows, q] in rows `rows` (all by default); they must lie within the bound given
        (midpoints of centroids inside the rows' range do)."""
        shift, base = (self.shift, self.base) if rows is None else (self.shift[rows], self.base[rows])
        return np.searchsorted(self.flat, (queries + shift).ravel(), side="left").reshape(queries.shape) - base


def _searchsorted_rows(sorted_rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Per row r: np.searchsorted(sorted_rows[r], queries[r]) for all rows at once, exactly (_SortedRows)."""
    return _SortedRows(sorted_rows, float(np.abs(queries).max(initial=0.0))).search(queries)


def _companded_start(xs: np.ndarray, k: int, bins: int = START_BINS) -> np.ndarray:
    """Start centroids [groups, k] spread as an optimal quantizer spreads them, with a density
    proportional to the data's density to the power 1/3. The data's density comes from `bins` quantile
    bins of the sorted values (each holds the same count, so its density is 1 / its width), so the
    quantizer's mass over a bin is width**(2/3); the centroids sit at the (j + 0.5) / k quantiles of that
    mass. Plain quantiles put too few centroids in the tails, and Lloyd's iterations stop at a fixed
    point near their start (measured: 3x kmeans1d's error on normal data)."""
    groups, n = xs.shape
    edges = xs[:, np.linspace(0, n - 1, bins + 1).round().astype(int)]  # [groups, bins + 1]
    width = np.diff(edges, axis=1)
    mass = np.concatenate([np.zeros((groups, 1)), np.cumsum(width ** EXPONENT, axis=1)], axis=1)
    total = mass[:, -1:]
    mass = np.where(total > 0, mass / np.where(total > 0, total, 1.0), np.linspace(0, 1, bins + 1))
    targets = np.broadcast_to((np.arange(k) + 0.5) / k, (groups, k))
    j = np.clip(_searchsorted_rows(mass, targets) - 1, 0, bins - 1)  # the bin holding each target
    m0, m1 = np.take_along_axis(mass, j, axis=1), np.take_along_axis(mass, j + 1, axis=1)
    frac = np.where(m1 > m0, (targets - m0) / np.where(m1 > m0, m1 - m0, 1.0), 0.5)
    e0 = np.take_along_axis(edges, j, axis=1)
    return np.sort(e0 + frac * np.take_along_axis(width, j, axis=1), axis=1)


def _costs(s1a, s2a, na, s1b, s2b, nb):
    """Sum of squared deviations from their mean of the values between two cuts, from the prefix sums
    (s1: values, s2: squares) and positions at the cuts (broadcast); 0 for an empty cluster (equal cuts:
    equal prefix sums), inf for a reversed pair."""
    n = nb - na
    d1 = s1b - s1a
    d1 *= d1
    d1 /= np.maximum(n, 1)
    cost = s2b - s2a
    cost -= d1
    cost[n < 0] = np.inf
    return cost


def _window_dp(p1, p2, cuts: np.ndarray, n: int, width: int, rows: np.ndarray) -> np.ndarray:
    """The best cuts [len(rows), k + 1] (first 0, last n) of the groups `rows` (their prefix sums: rows of
    p1, p2) with every inner cut within `width` positions of the given one (`cuts`, one row per group): an
    exact dynamic programme over (2 width + 1) candidates per cut, so its partition is never worse than the
    given one (which is among the candidates)."""
    groups = len(rows)
    cand = np.clip(cuts[:, 1:-1, None] + np.arange(-width, width + 1), 0, n)  # [groups, k - 1, c]
    flat = (cand + (rows * (n + 1))[:, None, None]).reshape(-1)
    s1 = p1.reshape(-1)[flat].reshape(cand.shape)
    s2 = p2.reshape(-1)[flat].reshape(cand.shape)
    pos = cand.astype(np.float64)
    best = _costs(0.0, 0.0, 0.0, s1[:, 0], s2[:, 0], pos[:, 0])  # [groups, c]: the first cluster [0, cut)
    back = []
    for m in range(1, cand.shape[1]):
        # best[a] + cost(a, b) = (best[a] - s2[a]) - (s1[b] - s1[a])**2 / (pos[b] - pos[a]) + s2[b]: the last
        # term does not depend on a, so it is added after the minimum over a
        d1 = s1[:, m, None, :] - s1[:, m - 1, :, None]  # [groups, c of cut m - 1, c of cut m]
        count = pos[:, m, None, :] - pos[:, m - 1, :, None]
        reversed_pair = count < 0
        np.maximum(count, 1, out=count)  # an empty cluster (equal cuts) has d1 = 0
        d1 *= d1
        d1 /= count
        total = (best - s2[:, m - 1])[:, :, None] - d1
        total[reversed_pair] = np.inf
        back.append(total.argmin(axis=1))  # [groups, c]: the best candidate of cut m - 1 for each one of cut m
        best = total.min(axis=1) + s2[:, m]
    best = best + _costs(s1[:, -1], s2[:, -1], pos[:, -1], p1[rows, -1:], p2[rows, -1:], float(n))
    choice = best.argmin(axis=1)
    at = np.arange(groups)
    out = np.empty_like(cuts)
    out[:, 0], out[:, -1] = 0, n
    inner = cand.shape[1]
    out[:, inner] = cand[at, inner - 1, choice]
    for m in range(inner - 1, 0, -1):
        choice = back[m - 1][at, choice]
        out[:, m] = cand[at, m - 1, choice]
    return out


def _cluster_block(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """values [groups, n] -> (centroids [groups, k] float64, cluster index [groups, n] uint8)."""
    groups, n = values.shape
    order = np.argsort(values, axis=1, kind="stable")
    xs = np.take_along_axis(values, order, axis=1).astype(np.float64)
    prefix = np.zeros((groups, n + 1))
    np.cumsum(xs, axis=1, out=prefix[:, 1:])
    centroids = _companded_start(xs, k)
    sorted_rows = _SortedRows(xs)  # centroids stay inside each row's range: so do the midpoints searched
    cuts = np.zeros((groups, k + 1), np.int64)
    cuts[:, -1] = n
    cuts[:, 1:-1] = sorted_rows.search((centroids[:, :-1] + centroids[:, 1:]) / 2)
    # Lloyd's iterations, each on the groups whose cuts moved in the one before (a group whose cuts did not
    # move is at its fixed point: the next iteration would give the same centroids and cuts)
    active = np.arange(groups)
    for _ in range(MAX_ITER):
        c = cuts[active]
        counts = np.diff(c, axis=1)
        sums = np.diff(prefix.reshape(-1)[c + (active * (n + 1))[:, None]], axis=1)
        centroids[active] = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids[active]), axis=1)
        mid = (centroids[active, :-1] + centroids[active, 1:]) / 2
        inner = sorted_rows.search(mid, active)
        moved = (inner != c[:, 1:-1]).any(axis=1)
        cuts[active, 1:-1] = inner
        active = active[moved]
        if not active.size:
            break
    del sorted_rows
    p2 = np.zeros((groups, n + 1))
    np.cumsum(xs * xs, axis=1, out=p2[:, 1:])
    active = np.arange(groups)  # likewise: a round that leaves a group's cuts as they were is its last
    for _ in range(DP_ROUNDS):
        new_cuts = _window_dp(prefix, p2, cuts[active], n, DP_WIDTH, active)
        moved = (new_cuts != cuts[active]).any(axis=1)
        cuts[active] = new_cuts
        active = active[moved]
        if not active.size:
            break
    counts = np.diff(cuts, axis=1)
    sums = np.diff(np.take_along_axis(prefix, cuts, axis=1), axis=1)
    centroids = np.where(counts > 0, sums / np.maximum(counts, 1), xs[:, :1])
    marks = np.zeros((groups, n + 1), np.int32)
    np.add.at(marks, (np.repeat(np.arange(groups), k - 1), cuts[:, 1:-1].ravel()), 1)
    ids_sorted = np.cumsum(marks[:, :n], axis=1).astype(np.uint8)
    ids = np.empty_like(ids_sorted)
    np.put_along_axis(ids, order, ids_sorted, axis=1)
    return centroids, ids


def grouped_lut(weight: np.ndarray, nbits: int, group_rows: int, block: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """k-means LUT of 2**nbits entries per group of `group_rows` rows (axis 0) of `weight`:
    (lut [groups, 2**nbits] in weight's dtype, indices uint8 of weight's shape). `block` (first, stop)
    clusters only those groups (a worker's share) and returns their rows."""
    rows = weight.shape[0]
    if rows % group_rows:
        raise ValueError(f"{rows} rows are not a multiple of the LUT group of {group_rows} rows")
    k, per_group = 1 << nbits, weight.size // rows * group_rows
    first, stop = block or (0, rows // group_rows)
    step = max(1, BLOCK_VALUES // per_group)
    luts, ids = [], []
    for g in range(first, stop, step):
        g1 = min(g + step, stop)
        part = np.asarray(weight[g * group_rows:g1 * group_rows]).reshape(g1 - g, per_group)
        c, i = _cluster_block(part, k)
        luts.append(c.astype(weight.dtype))
        ids.append(i.reshape((g1 - g) * group_rows, *weight.shape[1:]))
    return np.concatenate(luts), np.concatenate(ids)
