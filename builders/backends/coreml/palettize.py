"""k-means LUT palettization of a saved package, run as its own process:

    python -m builders.backends.coreml.palettize IN.mlpackage OUT.mlpackage BITS GROUP_SIZE WORKERS OP_TYPES

Only the weights of the named op types are palettized (conv for projections and the LM head, gather
for the embedding table): rope tables and norms stay fp16, as in ANEMLL.

coremltools forks its k-means workers (multiprocessing.Pool); a parent that has run torch ops holds an
OpenMP thread pool and the forked workers deadlock. This process never runs torch, so forking is safe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run(src: Path, dst: Path, bits: int, group_size: int, workers: int, op_types: list[str]) -> None:
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    from builders.backends.coreml.convert import save

    model = ct.models.MLModel(str(src), skip_model_load=True)
    op = cto.OpPalettizerConfig(mode="kmeans", nbits=bits, granularity="per_grouped_channel",
                                group_size=group_size, num_kmeans_workers=workers, weight_threshold=0)
    config = cto.OptimizationConfig(op_type_configs={t: op for t in op_types})
    save(cto.palettize_weights(model, config), dst)


def palettize_package(src: Path, dst: Path, bits: int, group_size: int, op_types: tuple[str, ...],
                      workers: int = 2) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "builders.backends.coreml.palettize", str(src), str(dst), str(bits),
           str(group_size), str(workers), ",".join(op_types)]
    proc = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0 or not (dst / "Manifest.json").is_file():
        raise RuntimeError(f"palettizing {src.name} to {bits},{group_size} exited {proc.returncode}; see the log")


if __name__ == "__main__":
    a = sys.argv[1:]
    run(Path(a[0]), Path(a[1]), int(a[2]), int(a[3]), int(a[4]), a[5].split(","))
