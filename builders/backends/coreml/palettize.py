"""k-means LUT palettization of a saved package, run as its own process:

    python -m builders.backends.coreml.palettize IN.mlpackage OUT.mlpackage BITS GROUP_SIZE WORKERS OP_TYPES [CACHE]

Only the weights of the named op types are palettized (conv for projections and the LM head, gather
for the embedding table): rope tables and norms stay fp16, as in ANEMLL.

With CACHE (a directory), the k-means result of every weight is kept there (.npz), keyed by the weight's
bytes and the settings: the prefill chunks carry the same weights as the FFN chunks, so step 4 reads
step 3's LUTs instead of clustering again (k-means is deterministic: the bytes are the same either way).

k-means: every per_grouped_channel scalar LUT (all this backend asks for) is clustered by
kmeans_lut.grouped_lut, all groups of a weight at once (vectorised Lloyd iterations from an
optimal-quantizer start, then an exact dynamic programme over a window around each cut), the weight's
groups shared among WORKERS forked processes: coremltools would run its kmeans1d once per group (38,000
calls, ~50 ms each, for a 0.5B model's LM head). Squared error within a few percent of kmeans1d's
optimum (kmeans_lut.py, tests/test_coreml_kmeans_lut.py). Anything else (another granularity, vector
LUTs) keeps coremltools' path, with its optimal 1-D k-means for scalar LUTs (_optimal_1d_kmeans):
coremltools would otherwise pick scikit-learn's KMeans below 10,000 weights. Deterministic (no random
init).

The k-means workers are forked (multiprocessing.Pool); a parent that has run torch ops holds an OpenMP
thread pool and forked workers deadlock. This process never imports torch (its __main__ blocks the
import), so forking is safe.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path


KMEANS = "grouped-lloyd-window-dp-2"  # part of the cache key: results of another k-means are never read back


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


def _grouped_kmeans(workers: int) -> None:
    """Make coremltools' palettizer cluster a per_grouped_channel scalar k-means LUT on axis 0 (every LUT
    this backend asks for) with kmeans_lut.grouped_lut, all groups of a weight at once, the weight's
    groups shared among `workers` forked processes (this process never runs torch). Anything else keeps
    coremltools' own path."""
    from multiprocessing import get_context

    import numpy as np
    from coremltools.converters.mil.mil import types
    from coremltools.optimize import _utils as optimize_utils
    from coremltools.optimize.coreml._quantization_passes import palettize_weights

    from builders.backends.coreml import kmeans_lut

    original = palettize_weights.blockwise_compress
    pool = get_context("fork").Pool(workers) if workers > 1 else None

    def grouped(original_data, mode, nbits, block_sizes, lut_function=None, cluster_dim=1, channel_axis=None,
                num_kmeans_workers=1):
        data = np.asarray(original_data)
        group = block_sizes[0] if block_sizes else 0
        simple = (str(mode).upper() == "KMEANS" and cluster_dim == 1 and nbits and lut_function is None
                  and channel_axis in (None, 0) and data.dtype == np.float16 and 0 < group < data.shape[0]
                  and data.shape[0] % group == 0
                  and all(b in (0, n) for b, n in zip(block_sizes[1:], data.shape[1:])))
        if not simple:
            return original(original_data, mode, nbits, block_sizes, lut_function, cluster_dim, channel_axis,
                            num_kmeans_workers)
        groups = data.shape[0] // group
        cuts = np.linspace(0, groups, (workers if pool and groups >= 2 * workers else 1) + 1).round().astype(int)
        shares = [(data[a * group:b * group], nbits, group) for a, b in zip(cuts[:-1], cuts[1:])]
        parts = pool.starmap(kmeans_lut.grouped_lut, shares) if len(shares) > 1 else [kmeans_lut.grouped_lut(*shares[0])]
        lut = np.concatenate([p[0] for p in parts]).reshape([groups] + [1] * (data.ndim - 1) + [1 << nbits, 1])
        indices = np.concatenate([p[1] for p in parts])
        dtype = types.nptype_from_builtin(types.string_to_builtin(f"uint{nbits}"))
        return optimize_utils.LutParams(indices.astype(dtype), lut, None)

    palettize_weights.blockwise_compress = staticmethod(grouped)


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


def _read_blobs_without_a_map() -> None:
    """coremltools loads a saved program's weights through one blob reader per weight file, which maps the
    whole file: every page it read stays resident next to the copies it returns (fp16 ones copied twice,
    through tobytes) until the program is loaded (measured on the 0.5B FFN: 1768 MiB at load, 1165 after).
    Whole-byte blobs are read here with positioned reads into their arrays instead (milrun.read_blob);
    sub-byte ones keep coremltools' reader."""
    import numpy as np
    from coremltools.converters.mil.frontend.milproto import load
    from coremltools.converters.mil.mil import types
    from coremltools.proto import MIL_pb2

    from builders.backends.coreml import milrun

    original = load._load_file_value
    whole = {types.fp16: np.float16, types.fp32: np.float32, types.int32: np.int32, types.uint32: np.uint32,
             types.int16: np.int16, types.uint16: np.uint16, types.int8: np.int8, types.uint8: np.uint8}

    def read(context, filevalue_spec, dtype):
        if dtype not in whole or not isinstance(filevalue_spec, MIL_pb2.Value.BlobFileValue):
            return original(context, filevalue_spec, dtype)
        path = os.path.join(context.weights_dir, filevalue_spec.fileName.split("/")[-1])
        return milrun.read_blob(Path(path), int(filevalue_spec.offset), whole[dtype])

    load._load_file_value = read


GC_EVERY = 8  # palettized weights between collections of the fp16 ones they replaced (_drop_replaced_weights)


def _drop_replaced_weights() -> None:
    """coremltools' compression pass lists every const op it will palettize, then transforms them one by
    one, each removed from the program once its LUT op replaces it; the list keeps every removed op, with
    its fp16 weight, until the pass ends (the 0.5B FFN: 683 MB of fp16 next to the 358 MB of indices).
    Its loop reads the list through tqdm: here it reads it through a generator that takes each op out of
    the list as it hands it over, and collects the removed ops (op and output variable reference each
    other) every GC_EVERY ops."""
    import gc

    from coremltools.optimize.coreml import _quantization_passes

    def draining(ops, **_):
        n = 0
        while ops:
            yield ops.pop(0)
            n += 1
            if n % GC_EVERY == 0:
                gc.collect()

    _quantization_passes.tqdm = draining


def run(src: Path, dst: Path, bits: int, group_size: int, workers: int, op_types: list[str],
        cache: Path | None = None) -> None:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    _read_blobs_without_a_map()
    _drop_replaced_weights()
    _optimal_1d_kmeans()
    _grouped_kmeans(workers)
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
    # torch is never needed here: without it coremltools imports ~200 MiB less (measured 372 -> 169 MiB
    # resident after `import coremltools`), next to the node process that holds its own torch
    sys.modules.setdefault("torch", None)
    a = sys.argv[1:]
    run(Path(a[0]), Path(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5].split(","), Path(a[6]) if len(a) > 6 else None)
