"""CPU baselines a cpu library is compiled for, and the check that this host has them.

A library built with LLVM `mcpu=x86-64-v3` contains AVX2/FMA/F16C instructions: run on an older CPU it
dies with SIGILL in the middle of a kernel. `check()` turns that into a one-line error before the
library is loaded. Feature names are the Linux /proc/cpuinfo flags (`abm` is LZCNT).
"""

from __future__ import annotations

import platform
from pathlib import Path

from builders.errors import NodeFailed

# x86-64 psABI microarchitecture levels (the v3 list: AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE,
# XSAVE on top of v2's SSE4.2/POPCNT/CMPXCHG16B/SSSE3)
BASELINES: dict[str, tuple[str, ...]] = {
    "x86-64-v3": ("sse4_2", "popcnt", "cx16", "ssse3", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm",
                  "movbe", "xsave"),
}
CPUINFO = Path("/proc/cpuinfo")


def host_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The feature flags of this host's first CPU (empty when /proc/cpuinfo has none)."""
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def missing(baseline: str, flags: set[str] | None = None, machine: str | None = None) -> list[str]:
    """Features of `baseline` this host lacks ([] = it can run such a library)."""
    if baseline not in BASELINES:
        raise NodeFailed(f"unknown CPU baseline '{baseline}' (known: {', '.join(BASELINES)})")
    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return [f"an x86_64 CPU (this host is {machine})"]
    flags = host_flags() if flags is None else flags
    return [f for f in BASELINES[baseline] if f not in flags]


def check(baseline: str | None, library: str, flags: set[str] | None = None, machine: str | None = None) -> None:
    """Raise a one-line NodeFailed when this host cannot run a library compiled for `baseline`."""
    if baseline is None:
        return
    lacking = missing(baseline, flags, machine)
    if lacking:
        raise NodeFailed(f"{library} is compiled for {baseline} CPUs; this host lacks {', '.join(lacking)} "
                         f"- run its check on an {baseline} machine (Haswell / Zen or later)")
