"""Run a node on this host: the same entry point and spec, with container paths mapped to host paths.

The spec is rewritten (container paths -> mount host paths) into <node dir>/spec.native.json and run as
`sys.executable -m builders.node run` with the project root first on PYTHONPATH. Ctrl-C or SIGTERM terminates
the child (then kills it after a grace period) before the interrupt propagates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from builders.executors import MALLOC_ENV, Mount, echo, node_dir, sigterm_raises, signals_deferred

PROJECT = Path(__file__).resolve().parents[2]
PATH_KEYS = ("out", "work", "result")
GRACE_S = 10


def to_host(path: str, mounts: list[Mount]) -> str:
    """A container path as the host path of the mount holding it (the longest matching mount wins)."""
    for m in sorted(mounts, key=lambda m: -len(m.container)):
        if path == m.container or path.startswith(m.container.rstrip("/") + "/"):
            return str(Path(m.host)) + path[len(m.container):]
    return path


def native_spec(spec: dict, mounts: list[Mount]) -> dict:
    spec = dict(spec)
    spec["inputs"] = {k: to_host(v, mounts) for k, v in spec["inputs"].items()}
    for key in PATH_KEYS:
        spec[key] = to_host(spec[key], mounts)
    return spec


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class NativeExecutor:
    name = "native"

    def __init__(self, echo: bool = False, limits=None):
        self.echo = echo  # limits bound containers only: a native node runs with this host's own limits

    def run(self, spec: dict, mounts: list[Mount], image_ref: str | None, log_path: Path) -> int:
        spec_path = node_dir(mounts) / "spec.native.json"
        spec_path.write_text(json.dumps(native_spec(spec, mounts), indent=1, sort_keys=True))
        pythonpath = os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
               **MALLOC_ENV}
        with sigterm_raises(), open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "builders.node", "run", str(spec_path)],
                                    stdout=subprocess.PIPE if self.echo else log, stderr=subprocess.STDOUT,
                                    env=env, cwd=node_dir(mounts), start_new_session=True)
            try:
                if self.echo:
                    for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                        log.write(chunk)
                        log.flush()
                        echo(chunk)
                return proc.wait()
            finally:
                with signals_deferred():
                    _stop(proc)
