"""Executors move a node spec, its mounts and its log; all conversion logic lives in backends.

    docker  (default) the node runs in its toolchain image, inputs read-only, no network
    native  the same entry point on this host (macOS runners for Metal/iPhone/Core ML; development)

Both run `python -m builders.node run <spec.json>` and return its exit code. The spec uses container
paths (/in/<role>, /node/out, /node/work, /node/result.json); one mount has container "/node" (the
node's host staging dir). Ctrl-C or SIGTERM stops the node (no container or child outlives it) and
the interrupt propagates.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from builders.errors import MatrixError

EXECUTORS = {  # name -> "module:class"
    "docker": "builders.executors.docker:DockerExecutor",
    "native": "builders.executors.native:NativeExecutor",
}


@dataclass(frozen=True)
class Mount:
    host: Path
    container: str
    read_only: bool


class Executor(Protocol):
    name: str

    def run(self, spec: dict, mounts: list[Mount], image_ref: str | None, log_path: Path) -> int:
        """Run `python -m builders.node run` for spec; return the node process exit code."""


class Terminated(KeyboardInterrupt):
    """SIGTERM received while a node ran; handled like Ctrl-C."""


def node_dir(mounts: list[Mount]) -> Path:
    for m in mounts:
        if m.container == "/node":
            return Path(m.host)
    raise ValueError("executor: no mount has container path /node (the node's staging dir)")


@contextmanager
def sigterm_raises():
    """While active (main thread only), SIGTERM raises Terminated instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def signals_deferred():
    """Hold SIGINT/SIGTERM back (cleanup must finish); they are delivered when the block ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def echo(chunk: bytes) -> None:
    """Copy node output to the terminal (stderr), whatever stderr currently is."""
    buffer = getattr(sys.stderr, "buffer", None)
    if buffer is not None:
        buffer.write(chunk)
        buffer.flush()
    else:
        sys.stderr.write(chunk.decode("utf-8", "replace"))


def get_executor(name: str, echo: bool = False, limits=None) -> Executor:
    """The executor called `name`; echo=True also streams node output to the terminal (stderr); limits
    (builders.container_limits.ContainerLimits, default: from this machine) bound node containers."""
    if name not in EXECUTORS:
        raise MatrixError(f"--executor {name}: unknown executor; choose {' or '.join(EXECUTORS)}")
    module, _, cls = EXECUTORS[name].partition(":")
    return getattr(importlib.import_module(module), cls)(echo=echo, limits=limits)


# The environment of every node process (MALLOC_ENV, both executors).
# glibc malloc: a fixed 1 MiB mmap threshold. By default the threshold grows (up to 32 MiB) each time a large
# block is freed, after which per-module fp32 weight copies and vocabulary-wide logits come from the heap and
# their freed space is kept, not returned: measured on the Qwen2.5-0.5B reference, peak RSS 1918 MiB by
# default, 1597 MiB with this (bf16 model 988 MiB). Blocks of 1 MiB or more are mapped and unmapped whole.
# OpenMP: idle threads sleep (PASSIVE) instead of spinning. A GGUF check runs llama.cpp (ggml on the system's
# libgomp) and then torch (its own bundled libgomp) in one process: with the default active wait, each runtime's
# idle threads spin on the cores the other computes on. Measured on the Qwen2.5-0.5B F16 check in the gguf image,
# 2 CPUs: llama.cpp pass 13.7 -> 7.4 s, dequantized-weights forward 22.9 -> 8.0 s. Work inside one parallel
# region (a ggml graph, a torch op) is not affected: only the wait between regions.
OMP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), **OMP_ENV}
