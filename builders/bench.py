"""`invoke bench`: cold build, warm no-op, conversion overhead vs llama.cpp's converter, peak memory.

Whole-process timings of the real CLI on the embedded default model; figures are printed and written
to <out>/bench.json. Not a test: nothing here asserts a speed.
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


def _direct_convert_seconds(out: Path, manifest: dict) -> float | None:
    """The same conversion, calling llama.cpp's converter directly in the same image (no buildmatrix)."""
    import docker

    from builders.store import Store

    client = docker.from_env()
    tiny = [d for d in (Store(out).root / ".store").iterdir() if (d / "manifest.json").is_file()
            and json.loads((d / "manifest.json").read_text())["node"]["kind"] == "tiny-model"]
    if not tiny:
        return None
    t0 = time.monotonic()
    client.containers.run(manifest["image"]["ref"], ["python", "/opt/llama.cpp/convert_hf_to_gguf.py", "/m",
                                                     "--outtype", "f16", "--outfile", "/tmp/x.gguf"],
                          volumes={str(tiny[0] / "out"): {"bind": "/m", "mode": "ro"}}, network_mode="none",
                          remove=True)
    return time.monotonic() - t0


def main(out: str, runs: int) -> None:
    out_path = (ROOT / out).resolve()
    shutil.rmtree(out_path, ignore_errors=True)
    build = [sys.executable, "-m", "invoke", "build", "--out", str(out_path)]
    cold, rc = _timed(build)
    if rc != 0:
        sys.exit(f"cold build failed (exit {rc}); run `{' '.join(build)}` to see why")
    warm = [_timed(build)[0] for _ in range(runs)]
    manifests = [json.loads(p.read_text()) for p in out_path.glob(".store/*/manifest.json")]
    convert = next(m for m in manifests if m["node"]["kind"] == "gguf-convert")
    node_seconds = convert["timings"]["steps"]["convert"]["seconds"]  # the convert step, in its container
    direct = _direct_convert_seconds(out_path, convert)
    figures = {
        "cold_build_s": round(cold, 2),
        "warm_noop_median_s": round(statistics.median(warm), 3),
        "warm_noop_max_s": round(max(warm), 3),
        "gguf_convert_step_s": node_seconds,
        "gguf_convert_direct_s": round(direct, 2) if direct else None,
        "convert_overhead_ratio": round(node_seconds / direct, 2) if direct else None,
        "peak_rss_mb_per_node": {m["node"]["key"]: m["extra"].get("peak_rss_mb") for m in manifests},
    }
    (out_path / "bench.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))
