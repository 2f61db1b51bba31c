"""Write a release directory from a store (see builders/release/__init__.py for the layout).

Everything is written into a temporary sibling directory and swapped in at the end: a failing release
leaves an earlier release at <dest> as it was, and <dest> never holds half a release. A <dest> that is
not empty and not a release is refused (nothing of the user's is replaced).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from builders import VERSION
from builders.atomic import swap_dir
from builders.release import ReleaseError, checksums, provenance
from builders.release.assets import write_assets
from builders.release.collect import Collected, ancestry, collect
from builders.release.manifests import split
from builders.release.parts import GITHUB_ASSET_LIMIT, reassembly
from builders.release.read import MANIFESTS, RELEASE_JSON

PROVENANCE = "provenance.intoto.json"
RUN_RECORD = "run-record.json"
RESERVED = {RELEASE_JSON, PROVENANCE, RUN_RECORD, MANIFESTS, checksums.NAME}
SCHEMA = 1


@dataclass
class Release:
    dest: Path
    cells: list[str]
    assets: list[dict]
    files: int


def _dump(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _check_dest(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise ReleaseError(f"--dest {dest}: is a file; pass a directory for the release")
    if dest.is_dir() and any(dest.iterdir()) and not (dest / RELEASE_JSON).is_file():
        raise ReleaseError(f"--dest {dest}: not empty and not a buildmatrix release; pass a new or empty directory")


def _write_manifests(got: Collected, tmp: Path) -> dict[str, str]:
    (tmp / MANIFESTS).mkdir()
    records, paths = [], {}
    for digest in ancestry(got):
        repro, record = split(got.manifest(digest))
        key = repro["node"]["key"]
        rel = f"{MANIFESTS}/{key}.json"
        if rel in paths.values():
            raise ReleaseError(f"two nodes named {key} with different digests in {got.out}: release one model "
                               "revision at a time (--only)")
        _dump(tmp / rel, repro)
        paths[digest] = rel
        records.append(record)
    _dump(tmp / RUN_RECORD, {"schema": SCHEMA, "nodes": sorted(records, key=lambda r: r["node"])})
    return paths


def build_release(out: Path, dest: Path, only: list[str] | None, matrix_path: Path,
                  limit: int = GITHUB_ASSET_LIMIT) -> Release:
    out, dest = Path(out), Path(dest)
    _check_dest(dest)
    got = collect(out, only)
    matrix = provenance.matrix_parameters(matrix_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.incoming-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        assets, by_node = write_assets(got, tmp, limit)
        for a in assets:
            if a.name in RESERVED:
                raise ReleaseError(f"node {a.node}'s output is named {a.name}, which a release uses for itself")
        manifest_paths = _write_manifests(got, tmp)
        asset_rows = []
        for a in assets:
            w = a.written
            row = {"name": w.name, "sha256": w.sha256, "size": w.size, "node": a.node, "kind": a.kind,
                   "manifest": manifest_paths[a.digest]}
            if w.parts:
                row["parts"] = w.parts
                row["reassemble"] = reassembly(w.name)
            asset_rows.append(row)
        cell_rows = [{"id": c.id, "node": c.node, "digest": c.digest,
                      "assets": list(dict.fromkeys(by_node[d] for d in c.ships)),
                      "verification": c.verification, "deferred": c.deferred} for c in got.cells]
        _dump(tmp / RELEASE_JSON, {"schema": SCHEMA, "builder_version": VERSION, "cells": cell_rows,
                                   "assets": asset_rows, "max_asset_bytes": limit})
        byproducts = [{"name": rel, "digest": {"sha256": checksums.sha256_of(tmp / rel)}}
                      for rel in sorted([RELEASE_JSON, *manifest_paths.values()])]
        stmt = provenance.statement([{"name": r["name"], "sha256": r["sha256"]} for r in asset_rows],
                                    [{"id": c.id, "digest": c.digest} for c in got.cells],
                                    [got.manifest(d) for d in ancestry(got)], matrix, byproducts)
        provenance.validate(stmt)
        _dump(tmp / PROVENANCE, stmt)
        sums = {p.relative_to(tmp).as_posix(): checksums.sha256_of(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        for r in asset_rows:  # a split asset is listed whole too: it checks once reassembled
            sums[r["name"]] = r["sha256"]
        (tmp / checksums.NAME).write_text(checksums.render(sums))
        _swap(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Release(dest, [c.id for c in got.cells], asset_rows, len(sums) + 1)


def _swap(tmp: Path, dest: Path) -> None:
    swap_dir(tmp, dest, dest.parent / f".{dest.name}.old-{os.getpid()}")
