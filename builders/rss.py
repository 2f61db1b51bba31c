"""Resident memory of this process, for the per-step and per-phase figures in manifests and logs."""

from __future__ import annotations

import os
import resource


def peak_mb() -> float:
    """High-water mark of this process or of its largest finished child process (a converter run as a
    subprocess), in MiB: getrusage's ru_maxrss (KiB on Linux)."""
    kb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return round(kb / 1024, 1)


def current_mb() -> float:
    """Resident memory now (MiB): /proc/self/statm's resident pages (0.0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
