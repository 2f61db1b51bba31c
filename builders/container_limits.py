"""Resource limits of node containers, from matrix.yaml's top-level `containers:` key.

    containers:
      memory: 16g   # a size with a unit: k, m, g or t (powers of 1024), e.g. 512m, 16g, 1.5g
      pids: 4096    # processes + threads a node may have at once

Defaults come from this machine: memory = 3/4 of the RAM this process may use (physical memory, or a
lower cgroup limit), rounded down to a whole GiB; pids = 4096. Swap is not added on top of the memory
limit, so a node that needs more is killed by the kernel and reported as exceeding it. Limits are not
part of any inputs digest: they decide whether a node can run here, never what it computes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from builders.errors import MatrixError

KEYS = ("memory", "pids")
UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIN_MEMORY = 128 << 20  # below this the node's Python cannot even import its toolchain
DEFAULT_PIDS = 4096
MIN_PIDS = 64
DEFAULT_SHARE = 0.75
CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt])i?b?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ContainerLimits:
    memory: int  # bytes; also the memory+swap limit (no swap)
    pids: int

    @property
    def memory_text(self) -> str:
        """The memory limit as a user would write it in matrix.yaml (16g, 512m, ...)."""
        for unit in "tgmk":
            if self.memory % UNITS[unit] == 0:
                return f"{self.memory // UNITS[unit]}{unit}"
        return f"{self.memory}b"

    def oom_reason(self) -> str:
        return f"container exceeded memory limit {self.memory_text}; raise containers.memory"


def machine_memory() -> int:
    """Bytes of memory this process may use: physical RAM, or the cgroup limit it runs under if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def default_limits() -> ContainerLimits:
    gib = UNITS["g"]
    memory = max(int(machine_memory() * DEFAULT_SHARE) // gib * gib, gib)
    return ContainerLimits(memory=memory, pids=DEFAULT_PIDS)


def parse_size(value: Any) -> int | None:
    """Bytes of a size written as `<number><k|m|g|t>` (16g, 1.5g, 512m, 512MiB); None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, str):
        return None
    match = _SIZE.match(value)
    if not match:
        return None
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def parse(data: Any, where: Callable[..., str]) -> ContainerLimits:
    """Validated limits from the `containers:` mapping (None = all defaults). `where(*keys)` gives the
    `matrix.yaml:<line>` of a key; every error is one line naming it, the value and what to write."""
    defaults = default_limits()
    if data is None:
        return defaults
    if not isinstance(data, dict):
        raise MatrixError(f"{where('containers')}: containers: must be a mapping like "
                          f"{{memory: 16g, pids: 4096}}, got {type(data).__name__}")
    for key in data:
        if key not in KEYS:
            raise MatrixError(f"{where('containers', key)}: containers.{key}: unknown key; use {' or '.join(KEYS)}")
    memory = defaults.memory
    if "memory" in data:
        memory = parse_size(data["memory"])
        if memory is None:
            raise MatrixError(f"{where('containers', 'memory')}: containers.memory: {data['memory']!r} is not a size; "
                              f"write a number with a unit k, m, g or t, e.g. 16g")
        if memory < MIN_MEMORY:
            raise MatrixError(f"{where('containers', 'memory')}: containers.memory: {data['memory']!r} is below the "
                              f"minimum 128m a node needs; e.g. 16g")
    pids = defaults.pids
    if "pids" in data:
        pids = data["pids"]
        if isinstance(pids, bool) or not isinstance(pids, int) or pids < MIN_PIDS:
            raise MatrixError(f"{where('containers', 'pids')}: containers.pids: {pids!r} must be a whole number "
                              f">= {MIN_PIDS}, e.g. {DEFAULT_PIDS}")
    return ContainerLimits(memory=memory, pids=pids)
