"""`invoke bench`: cold build, warm no-op, conversion overhead vs llama.cpp's converter, peak memory, and a
no-op rebuild of a many-cell matrix (every cell cached: each entry checked through the hash cache, every
published copy checked) against the bare CLI start-up; target: under 1 s above start-up.

Whole-process timings of the real CLI on the embedded default model; figures are printed and written
to <out>/bench.json. Not a test: nothing here asserts a speed. `invoke bench --model M` gives per-node
figures of another model's build instead (builders/bench_nodes.py).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(cmd: list[str]) -> tuple[float, int]:
    t0 = time.monotonic()
    rc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    return time.monotonic() - t0, rc


def _direct_convert_seconds(model_dir: Path, manifest: dict) -> float:
    """The same conversion, calling llama.cpp's converter directly in the same image (no buildmatrix)."""
    import docker

    client = docker.from_env()
    t0 = time.monotonic()
    client.containers.run(manifest["image"]["ref"], ["python", "/opt/llama.cpp/convert_hf_to_gguf.py", "/m",
                                                     "--outtype", "f16", "--outfile", "/tmp/x.gguf"],
                          volumes={str(model_dir): {"bind": "/m", "mode": "ro"}}, network_mode="none",
                          remove=True)
    return time.monotonic() - t0


def _f16_convert(out: Path) -> tuple[dict, Path]:
    """The manifest of the default build's F16 gguf-convert node and its model's directory, both found by
    the plan's digests (not the first manifest of a kind in the store, which may be another model's)."""
    from builders.bench_nodes import _plan

    plan = _plan(out, None, None, None, None)
    pn = next((p for p in plan.nodes.values() if p.node.kind == "gguf-convert" and p.node.params.get("quant") == "F16"),
              None)
    if pn is None:
        sys.exit("the default build has no F16 gguf-convert node to compare with llama.cpp's converter")
    model = plan.models[pn.model]
    model_dir = out / ".store" / plan.nodes[model.node].digest / "out" if model.node else plan.model_dirs[model.name]
    manifest = out / ".store" / pn.digest / "manifest.json"
    if not manifest.is_file():
        sys.exit(f"{pn.node.key}: no manifest at {manifest}; the cold build did not promote it")
    return json.loads(manifest.read_text()), model_dir


NOOP_QUANTS = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0")  # the ones with thresholds
NOOP_TARGETS = ("cpu", "cuda", "android", "metal")  # 8 x 4 = 32 cells of one tiny model


def noop_many_cells(out_path: Path, seed: Path, runs: int) -> dict:
    """Median wall time of a no-op `invoke build` of 32 cached cells vs `invoke --list` (bare start-up)."""
    root = out_path.with_name(out_path.name + "-noop")
    shutil.rmtree(root, ignore_errors=True)
    build = [sys.executable, "-m", "invoke", "build", "--out", str(root), "--model", "tiny:llama", "--backends",
             "gguf", "--quants", ",".join(NOOP_QUANTS), "--targets", ",".join(NOOP_TARGETS),
             "--cache-from", str(seed)]
    seconds, rc = _timed(build)
    if rc != 0:
        sys.exit(f"the {len(NOOP_QUANTS) * len(NOOP_TARGETS)}-cell build failed (exit {rc}); run "
                 f"`{' '.join(build)}` to see why")
    time.sleep(2.5)  # past the hash cache's racy window: the files just written count as settled
    _timed(build)  # remembers the settled hashes
    noop = [_timed(build)[0] for _ in range(runs)]
    startup = [_timed([sys.executable, "-m", "invoke", "--list"])[0] for _ in range(runs)]
    index = json.loads((root / "index.json").read_text())
    return {"noop_cells": len(index["artifacts"]), "noop_first_build_s": round(seconds, 2),
            "noop_rebuild_median_s": round(statistics.median(noop), 3),
            "cli_startup_median_s": round(statistics.median(startup), 3),
            "noop_over_startup_s": round(statistics.median(noop) - statistics.median(startup), 3)}


def main(out: str, runs: int) -> None:
    out_path = (ROOT / out).resolve()
    shutil.rmtree(out_path, ignore_errors=True)
    build = [sys.executable, "-m", "invoke", "build", "--out", str(out_path)]
    cold, rc = _timed(build)
    if rc != 0:
        sys.exit(f"cold build failed (exit {rc}); run `{' '.join(build)}` to see why")
    warm = [_timed(build)[0] for _ in range(runs)]
    manifests = [json.loads(p.read_text()) for p in out_path.glob(".store/*/manifest.json")]
    convert, model_dir = _f16_convert(out_path)
    node_seconds = convert["timings"]["steps"]["convert"]["seconds"]  # the convert step, in its container
    direct = _direct_convert_seconds(model_dir, convert)
    figures = {
        "cold_build_s": round(cold, 2),
        "warm_noop_median_s": round(statistics.median(warm), 3),
        "warm_noop_max_s": round(max(warm), 3),
        "gguf_convert_step_s": node_seconds,
        "gguf_convert_direct_s": round(direct, 2) if direct else None,
        "convert_overhead_ratio": round(node_seconds / direct, 2) if direct else None,
        "peak_rss_mb_per_node": {m["node"]["key"]: m["timings"].get("peak_rss_mb") for m in manifests},
        **noop_many_cells(out_path, out_path, runs),
    }
    (out_path / "bench.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
