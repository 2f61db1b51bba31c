"""The per-node manifest (JSON, the contract's SCHEMA), written from a typed StepResult (builders/contract.py).
No wall-clock timestamps, no host paths."""

from __future__ import annotations

from builders import VERSION
from builders.contract import SCHEMA, StepResult, Verification


def rev_short(model) -> str:
    """The <rev7> path component: the hub commit, else the snapshot digest."""
    return (model.revision if len(model.revision) == 40 else model.digest)[:7]


def make_manifest(pn, plan, result: StepResult, image: dict, outputs: list[dict], parents: dict[str, dict],
                  model_files: dict[str, str], seconds: float, source_date_epoch: int) -> dict:
    """The manifest of a promoted node: from the plan node, its typed StepResult and the host's facts."""
    model = plan.models[pn.model]
    nd = pn.node
    params = dict(nd.params)
    thresholds = params.pop("thresholds", None)
    ver = result.verification or Verification.none()
    return {
        "schema": SCHEMA,
        "builder_version": VERSION,
        "node": {"key": nd.key, "kind": nd.kind, "digest": pn.digest, "cells": sorted(pn.cells)},
        "model": {"name": model.name, "source": model.source, "revision": model.revision, "digest": model.digest,
                  "architecture": model.arch, "files_sha256": model_files},
        "backend": nd.backend,
        "quant": params.get("quant"),
        "target": params.get("target"),
        "options": params,
        "parents": parents,
        "image": image,
        "tool_versions": result.tool_versions,
        "runtime_abi": result.runtime_abi,
        "outputs": outputs,
        "verification": ver.to_json(),
        "thresholds": thresholds,
        "tensor_types": result.tensor_types,
        "quant_fallback": result.quant_fallback,
        "deferred": result.deferred,
        "notes": result.notes,
        "reports": result.reports,
        "timings": {"seconds": round(seconds, 3), "steps": result.steps, "peak_rss_mb": result.peak_rss_mb,
                    **{k: v for k, v in (("container_peak_rss_mb", result.container_peak_rss_mb),
                                         ("container_peak_mem_mb", result.container_peak_mem_mb),
                                         ("container_samples", result.container_samples)) if v is not None}},
        "source_date_epoch": source_date_epoch,
    }
