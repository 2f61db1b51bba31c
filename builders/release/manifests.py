"""A node manifest split in two: what a rebuild from the same inputs reproduces, and the run record.

The run record holds the fields that differ from one build to the next even when every artifact is
bit-identical: the wall-clock timings (the manifest's `timings`, any `*_seconds` a node reports), peak
memory (`peak_rss*`) and the toolchain image id (docker's image id hashes the image config, which carries
its build time; the image's content tag - the hash of its rendered Dockerfile and context - stays in the
reproducible part), and the cells the node was first built for (`node.cells`: a node built for a Q4_K_M
cell, or for its F16 cell alone, or imported from a store that built it for either, is the same node; the
workflow simulation found a CI release and a local one differing only there).
"""

from __future__ import annotations

import copy

# (path of keys) of each run-specific field of a manifest
RUN_FIELDS = (("timings",), ("image", "id"), ("node", "cells"))


def is_run_measurement(key: str) -> bool:
    """What a node measures of its own run - durations (reports.library.build_seconds of an MLC compile,
    reports.*.train_seconds of a tiny model) and peak memory (timings.peak_rss_mb) - wherever it is."""
    return key == "seconds" or key.endswith("_seconds") or key.startswith("peak_rss")


def _pop_durations(d, path: tuple[str, ...], found: dict) -> None:
    if isinstance(d, dict):
        for k in sorted(d):
            if is_run_measurement(k):
                found[".".join(path + (k,))] = d.pop(k)
            else:
                _pop_durations(d[k], path + (k,), found)
    elif isinstance(d, list):
        for i, v in enumerate(d):
            _pop_durations(v, path + (str(i),), found)


def _pop(d: dict, path: tuple[str, ...]):
    for k in path[:-1]:
        d = d.get(k)
        if not isinstance(d, dict):
            return None
    return d.pop(path[-1], None) if isinstance(d, dict) else None


def split(manifest: dict) -> tuple[dict, dict]:
    """(reproducible part, run record) of one manifest; the input is not changed."""
    repro = copy.deepcopy(manifest)
    record = {"node": manifest["node"]["key"], "digest": manifest["node"]["digest"]}
    for path in RUN_FIELDS:
        value = _pop(repro, path)
        if value is not None:
            record[".".join(path)] = value
    _pop_durations(repro, (), record)
    return repro, record
