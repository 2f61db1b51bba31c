"""Resident memory and CPU time of this process, for the per-step and per-phase figures in manifests and logs."""

from __future__ import annotations

import os
import resource


def peak_mb() -> float:
    """High-water mark of this process or of its largest finished child process (a converter run as a
    subprocess), in MiB: getrusage's ru_maxrss (KiB on Linux)."""
    kb = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return round(kb / 1024, 1)


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished child processes so far. On a shared
    machine a step's CPU seconds move less with other work than its wall time does, so the manifests
    carry both (a step whose CPU seconds are far above its wall time ran on several cores)."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def current_mb() -> float:
    """Resident memory now (MiB): /proc/self/statm's resident pages (0.0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
