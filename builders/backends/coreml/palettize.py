"""k-means LUT palettization of a saved package, run as its own process:

    python -m builders.backends.coreml.palettize IN.mlpackage OUT.mlpackage BITS GROUP_SIZE WORKERS OP_TYPES [CACHE]

Only the weights of the named op types are palettized (conv for projections and the LM head, gather
for the embedding table): rope tables and norms stay fp16, as in ANEMLL.

With CACHE (a directory), the k-means result of every weight is kept there (.npz), keyed by the weight's
bytes and the settings: the prefill chunks carry the same weights as the FFN chunks, so step 4 reads
step 3's LUTs instead of clustering again (k-means is deterministic: the bytes are the same either way).

k-means is coremltools' own optimal 1-D k-means (its vendored kmeans1d) for every scalar LUT: coremltools
picks it only for fp16 blocks of 10,000 weights or more and uses scikit-learn's KMeans (k-means++, one
init, tol 1e-2) below that - every block of a per_grouped_channel LUT (group 4 x 896 = 3584 weights) -
which is the slower one by far (measured: hours of CPU for a 0.5B model's LM head) and never finds a
better clustering than the optimal one. Deterministic (no random init).

coremltools forks its k-means workers (multiprocessing.Pool); a parent that has run torch ops holds an
OpenMP thread pool and the forked workers deadlock. This process never runs torch, so forking is safe.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


KMEANS = "kmeans1d"  # part of the cache key: results of another k-means are never read back


def _cache_lut_results(cache: Path) -> None:
    """Memoize coremltools' per-weight palettization (palettize_weights.blockwise_compress) on disk."""
    import numpy as np
    from coremltools.converters.mil.mil import types
    from coremltools.optimize import _utils as optimize_utils
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    compress = palettize_weights.blockwise_compress
    cache.mkdir(parents=True, exist_ok=True)

    def cached(original_data, *args, **kwargs):
        h = hashlib.sha256(np.ascontiguousarray(original_data).tobytes())
        h.update(repr((KMEANS, original_data.shape, str(original_data.dtype), args, sorted(kwargs.items()))).encode())
        f = cache / f"{h.hexdigest()}.npz"
        if f.is_file():
            with np.load(f) as z:
                nbits = int(z["nbits"])
                axis = int(z["vector_axis"])
                dtype = types.nptype_from_builtin(types.string_to_builtin(f"uint{nbits}"))
                return optimize_utils.LutParams(z["indices"].astype(dtype), z["lut"], None if axis < 0 else axis)
        result = compress(original_data, *args, **kwargs)
        if isinstance(result, optimize_utils.LutParams):
            nbits = int(np.log2(result.lut.shape[-2]))
            tmp = f.with_suffix(".tmp.npz")
            np.savez(tmp, indices=np.asarray(result.indices, np.uint8), lut=result.lut, nbits=nbits,
                     vector_axis=-1 if result.vector_axis is None else result.vector_axis)
            tmp.replace(f)
        return result

    palettize_weights.blockwise_compress = staticmethod(cached)


def _optimal_1d_kmeans() -> None:
    """Make coremltools' k-means palettizer use its optimal 1-D k-means for scalar (cluster_dim 1) LUTs."""
    from coremltools._deps import _HAS_KMEANS1D
    from coremltools.optimize.coreml import _quantization_passes as passes

    if not _HAS_KMEANS1D:
        raise RuntimeError("coremltools was installed without its kmeans1d extension (coremltools._deps)")
    lut_and_indices = passes._get_kmeans_lookup_table_and_weight

    def optimal(nbits, weight, force_kmeans1d=False, cluster_dim=1, vector_axis=None):
        return lut_and_indices(nbits, weight, force_kmeans1d=force_kmeans1d or cluster_dim == 1,
                               cluster_dim=cluster_dim, vector_axis=vector_axis)

    passes._get_kmeans_lookup_table_and_weight = optimal


def run(src: Path, dst: Path, bits: int, group_size: int, workers: int, op_types: list[str],
        cache: Path | None = None) -> None:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    _optimal_1d_kmeans()
    if cache is not None:
        _cache_lut_results(cache)
    from builders.backends.coreml.package import save

    model = ct.models.MLModel(str(src), skip_model_load=True)
    op = cto.OpPalettizerConfig(mode="kmeans", nbits=bits, granularity="per_grouped_channel",
                                group_size=group_size, num_kmeans_workers=workers, weight_threshold=0)
    config = cto.OptimizationConfig(op_type_configs={t: op for t in op_types})
    save(cto.palettize_weights(model, config), dst)


def palettize_package(src: Path, dst: Path, bits: int, group_size: int, op_types: tuple[str, ...],
                      workers: int = 2, cache: Path | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "builders.backends.coreml.palettize", str(src), str(dst), str(bits),
           str(group_size), str(workers), ",".join(op_types)] + ([str(cache)] if cache else [])
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0 or not (dst / "Manifest.json").is_file():
        raise RuntimeError(f"palettizing {src.name} to {bits},{group_size} exited {proc.returncode}; see the log")
    check_palettized(dst, f"{bits},{group_size}", op_types)


def check_palettized(path: Path, code: str, op_types: tuple[str, ...]) -> None:
    """Fail closed: every weight of the asked op types must now be a constexpr_lut_to_dense output."""
    from builders.backends.coreml import milrun
    from builders.backends.coreml.checks import unpalettized
    from builders.errors import NodeFailed

    left = unpalettized(milrun.Package(path), op_types)
    if left:
        raise NodeFailed(f"palettizing {path.name} to LUT {code}: coremltools left {len(left)} weight(s) in fp16 "
                         f"(rows not a multiple of the group size?): {'; '.join(left[:4])}"
                         + (" ..." if len(left) > 4 else ""))


if __name__ == "__main__":
    a = sys.argv[1:]
    run(Path(a[0]), Path(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5].split(","), Path(a[6]) if len(a) > 6 else None)
