"""Peak memory of a node container, from its cgroup as the docker engine reports it (`docker stats`).

The node's own `peak_rss_mb` (builders/node.py) is the largest single process (getrusage); a node that
runs a converter in a child process, or several workers, uses more than that at once. `MemorySampler`
reads the engine's stats stream (about one sample a second) while the container runs and keeps:

    container_peak_rss_mb   the largest sampled resident memory of the whole container: anonymous memory
                            plus file pages mapped into processes (cgroup v1 total_rss + total_mapped_file,
                            v2 anon + file_mapped) - what `ps` would sum as RSS; page cache is not counted
    container_peak_mem_mb   the cgroup's own high-water mark of everything charged to it, page cache of
                            the files the node wrote included (v1 max_usage; v2: the largest sampled usage)
    container_samples       how many samples the figures come from (0: the engine gave none - no figures)

A sample every second can miss a spike shorter than that; the cgroup v1 high-water mark cannot.
"""

from __future__ import annotations

import threading
from typing import Any

MB = 1 << 20


def rss_bytes(memory_stats: dict[str, Any]) -> int | None:
    """Resident memory of the cgroup in one stats sample (None if the sample has no breakdown)."""
    stats = memory_stats.get("stats") or {}
    if "total_rss" in stats:  # cgroup v1
        return int(stats["total_rss"]) + int(stats.get("total_mapped_file", 0))
    if "anon" in stats:  # cgroup v2
        return int(stats["anon"]) + int(stats.get("file_mapped", 0))
    return None


class MemorySampler:
    def __init__(self, container):
        self.container = container
        self.peak_rss = 0
        self.peak_mem = 0
        self.samples = 0
        self._thread = threading.Thread(target=self._run, name="container-memory", daemon=True)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for sample in self.container.stats(stream=True, decode=True):
                mem = sample.get("memory_stats") or {}
                if not mem:  # the container has stopped: the engine sends empty samples
                    if self.samples:
                        return
                    continue
                rss = rss_bytes(mem)
                if rss is None:
                    continue
                self.samples += 1
                self.peak_rss = max(self.peak_rss, rss)
                self.peak_mem = max(self.peak_mem, int(mem.get("max_usage") or 0), int(mem.get("usage") or 0))
        except Exception:  # the container went away mid-read: keep what was sampled
            return

    def figures(self, wait: float = 2.0) -> dict[str, Any]:
        self._thread.join(wait)
        if not self.samples:
            return {"container_samples": 0}
        return {"container_peak_rss_mb": round(self.peak_rss / MB, 1),
                "container_peak_mem_mb": round(self.peak_mem / MB, 1), "container_samples": self.samples}
