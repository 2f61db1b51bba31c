"""Run a node on this host: the same entry point and spec, with container paths mapped to host paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from builders.executors import Mount, node_dir

PROJECT = Path(__file__).resolve().parents[2]


def _map(path: str, mounts: list[Mount]) -> str:
    for m in sorted(mounts, key=lambda m: -len(m.container)):
        if path == m.container or path.startswith(m.container + "/"):
            return str(m.host) + path[len(m.container):]
    return path


class NativeExecutor:
    name = "native"

    def run(self, spec: dict, mounts: list[Mount], image_ref: str | None, log_path: Path) -> int:
        spec = dict(spec)
        spec["inputs"] = {k: _map(v, mounts) for k, v in spec["inputs"].items()}
        for key in ("out", "work", "result"):
            spec[key] = _map(spec[key], mounts)
        spec_path = node_dir(mounts) / "spec.native.json"
        spec_path.write_text(json.dumps(spec, indent=1, sort_keys=True))
        env = {**os.environ, "PYTHONPATH": str(PROJECT), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "builders.node", "run", str(spec_path)], stdout=log,
                                    stderr=subprocess.STDOUT, env=env, cwd=node_dir(mounts))
            previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
            try:
                return proc.wait()
            except KeyboardInterrupt:
                proc.terminate()
                proc.wait(timeout=30)
                raise
            finally:
                signal.signal(signal.SIGTERM, previous)
