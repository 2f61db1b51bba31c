"""The per-node manifest (JSON, schema-versioned). No wall-clock timestamps, no host paths."""

from __future__ import annotations

from builders import VERSION

SCHEMA = 1


def rev_short(model) -> str:
    """The <rev7> path component: the hub commit, else the snapshot digest."""
    return (model.revision if len(model.revision) == 40 else model.digest)[:7]


def make_manifest(pn, plan, result: dict, image: dict, outputs: list[dict], parents: dict[str, dict],
                  seconds: float, source_date_epoch: int) -> dict:
    model = plan.models[pn.model]
    nd = pn.node
    params = dict(nd.params)
    thresholds = params.pop("thresholds", None)
    files = plan.model_files.get(pn.model)
    if files is None and model.node and model.node in plan.nodes:  # tiny: the generated files
        files = parents.get("_model_files", {})
    return {
        "schema": SCHEMA,
        "builder_version": VERSION,
        "node": {"key": nd.key, "kind": nd.kind, "digest": pn.digest, "cells": sorted(pn.cells)},
        "model": {"name": model.name, "source": model.source, "revision": model.revision, "digest": model.digest,
                  "architecture": model.arch, "files_sha256": files or {}},
        "backend": nd.backend,
        "quant": params.get("quant"),
        "target": params.get("target"),
        "options": params,
        "parents": {r: v for r, v in parents.items() if not r.startswith("_")},
        "image": image,
        "tool_versions": result.get("tool_versions", {}),
        "runtime_abi": result.get("runtime_abi", {}),
        "outputs": outputs,
        "verification": result.get("verification") or {"passed": None, "note": "this node has no numeric check"},
        "thresholds": thresholds,
        "tensor_types": result.get("tensor_types"),
        "quant_fallback": result.get("quant_fallback"),
        "deferred": result.get("deferred", []),
        "notes": result.get("notes", []),
        "extra": {k: v for k, v in result.items() if k not in {
            "status", "reason", "steps", "steps_done", "tool_versions", "runtime_abi", "verification",
            "deferred", "notes", "tensor_types", "quant_fallback"}},
        "timings": {"seconds": round(seconds, 3), "steps": result.get("steps", {})},
        "source_date_epoch": source_date_epoch,
    }
