"""Run a node in its toolchain container through the docker SDK.

The project's builders/ package is mounted read-only at /opt/buildmatrix; inputs are read-only, the
network is off, HOME and caches live in the node's work dir. Ctrl-C or SIGTERM kills and removes the
container before the interrupt propagates: no container outlives its build.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from builders.executors import Mount, node_dir

PROJECT = Path(__file__).resolve().parents[2]
LABEL = "buildmatrix.node"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _raise_terminated(signum, frame):
    raise _Terminated()


class DockerExecutor:
    name = "docker"

    def __init__(self, echo: bool = False):
        import docker

        self.client = docker.from_env(timeout=600)
        self.echo = echo

    def cleanup_stale(self) -> int:
        stale = self.client.containers.list(all=True, filters={"label": LABEL})
        for c in stale:
            c.remove(force=True)
        return len(stale)

    def run(self, spec: dict, mounts: list[Mount], image_ref: str | None, log_path: Path) -> int:
        (node_dir(mounts) / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True))
        volumes = {str(m.host): {"bind": m.container, "mode": "ro" if m.read_only else "rw"} for m in mounts}
        volumes[str(PROJECT / "builders")] = {"bind": "/opt/buildmatrix/builders", "mode": "ro"}
        env = {"PYTHONPATH": "/opt/buildmatrix", "HOME": "/node/work/home", "XDG_CACHE_HOME": "/node/work/cache",
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
               "OMP_NUM_THREADS": str(os.cpu_count() or 2)}
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
        container = None
        try:
            container = self.client.containers.run(
                image_ref, ["python", "-m", "builders.node", "run", "/node/spec.json"], detach=True,
                volumes=volumes, environment=env, network_mode="none", user=f"{os.getuid()}:{os.getgid()}",
                labels={LABEL: spec["key"]}, working_dir="/node/work")
            with open(log_path, "ab") as log:
                for chunk in container.logs(stream=True, follow=True):
                    log.write(chunk)
                    log.flush()
                    if self.echo:
                        os.write(2, chunk)
            return int(container.wait().get("StatusCode", 1))
        finally:
            signal.signal(signal.SIGTERM, previous)
            if container is not None:
                try:
                    container.remove(force=True)  # kills it if still running
                except Exception:  # already gone
                    pass
