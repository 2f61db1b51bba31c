"""Executors move a node spec, its mounts and its log; all conversion logic lives in backends.

    docker  (default) the node runs in its toolchain image, inputs read-only, no network
    native  the same entry point on this host (macOS runners for Metal/iPhone/Core ML; development)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from builders.errors import MatrixError


@dataclass(frozen=True)
class Mount:
    host: Path
    container: str
    read_only: bool


class Executor(Protocol):
    name: str

    def run(self, spec: dict, mounts: list[Mount], image_ref: str | None, log_path: Path) -> int:
        """Run `python -m builders.node run` for spec; return the node process exit code."""


def node_dir(mounts: list[Mount]) -> Path:
    return next(m.host for m in mounts if m.container == "/node")


def get_executor(name: str) -> Executor:
    if name == "docker":
        from builders.executors.docker import DockerExecutor

        return DockerExecutor()
    if name == "native":
        from builders.executors.native import NativeExecutor

        return NativeExecutor()
    raise MatrixError(f"--executor {name}: unknown executor; choose docker or native")
