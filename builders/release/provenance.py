"""The release's provenance: an in-toto Statement v1 with a SLSA provenance v1 predicate.

- subject: every release asset (the reassembled file when it ships in parts), by sha256.
- buildDefinition.buildType: BUILD_TYPE (what the fields below mean is documented in docs/release.md).
- externalParameters: the matrix file given to the release (its sha256 and parsed content) and, for every
  cell, the parameters its artifact node was built with (model, backend, quant, target, options,
  thresholds) as its manifest records them.
- internalParameters: builder version, SOURCE_DATE_EPOCH, the inputs digest of every node involved.
- resolvedDependencies: every model file (sha256; hub models with their pinned revision), every
  toolchain image (content tag; docker image id as sha256), the code commit (`git rev-parse HEAD`).
- runDetails.builder.id: BUILDMATRIX_BUILDER_ID, else the GitHub Actions workflow that runs it, else
  LOCAL_BUILDER. No timestamps: the statement is a function of the store and the checkout.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path

import yaml

from builders import VERSION
from builders.release import ReleaseError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:buildmatrix:buildtype:cells:v1"
LOCAL_BUILDER = "urn:buildmatrix:builder:local"
SCHEMA_PATH = Path(__file__).with_name("intoto-slsa-provenance-v1.schema.json")
PROJECT = Path(__file__).resolve().parents[2]


def code_commit(root: Path = PROJECT) -> dict | None:
    """The checkout's commit (and whether files differ from it), or None outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                             timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"name": "buildmatrix", "digest": {"gitCommit": sha},
            "annotations": {"uncommitted_changes": bool(dirty)}}


def builder_id() -> str:
    if os.environ.get("BUILDMATRIX_BUILDER_ID"):
        return os.environ["BUILDMATRIX_BUILDER_ID"]
    if os.environ.get("GITHUB_ACTIONS") == "true" and os.environ.get("GITHUB_WORKFLOW_REF"):
        server = os.environ.get("GITHUB_SERVER_URL", "https://github.com")
        return f"{server}/{os.environ['GITHUB_WORKFLOW_REF']}"
    return LOCAL_BUILDER


def matrix_parameters(matrix_path: Path) -> dict:
    try:
        data = Path(matrix_path).read_bytes()
    except OSError as e:
        raise ReleaseError(f"--matrix {matrix_path}: cannot read it ({e.strerror}); pass the matrix the store "
                           "was built from") from None
    return {"file": Path(matrix_path).name, "sha256": hashlib.sha256(data).hexdigest(),
            "content": yaml.safe_load(data)}


def _model_dependencies(manifests: list[dict]) -> list[dict]:
    deps = {}
    for m in manifests:
        model = m.get("model") or {}
        revision = model.get("revision") or ""
        hub = len(revision) == 40 and all(ch in "0123456789abcdef" for ch in revision)  # local: local-<7>
        for path, sha in sorted((model.get("files_sha256") or {}).items()):
            rd = {"name": f"model:{model['name']}/{path}", "digest": {"sha256": sha},
                  "annotations": {"model": model["name"], "source": model.get("source"),
                                  "revision": model.get("revision"), "snapshot_digest": model.get("digest")}}
            if hub:
                rd["uri"] = f"https://huggingface.co/{model['source']}/resolve/{model['revision']}/{path}"
            deps[rd["name"]] = rd
    return [deps[k] for k in sorted(deps)]


def _image_dependencies(manifests: list[dict]) -> list[dict]:
    deps = {}
    for m in manifests:
        image = m.get("image") or {}
        ref = image.get("ref")
        if not ref:
            continue
        repo, _, tag = ref.rpartition(":")
        rd = {"name": f"image:{image.get('name')}", "uri": f"pkg:docker/{repo}@{tag}",
              "annotations": {"ref": ref, "content_tag": tag, "tools": image.get("tools") or {}}}
        if image.get("name") == "native":
            rd["annotations"]["executor"] = "native (the host's own tools; no container)"
        image_id = image.get("id") or ""
        if image_id.startswith("sha256:"):
            rd["digest"] = {"sha256": image_id.split(":", 1)[1]}
        deps[(rd["name"], ref)] = rd
    return [deps[k] for k in sorted(deps)]


def statement(subjects: list[dict], cells: list[dict], manifests: list[dict], matrix: dict,
              byproducts: list[dict]) -> dict:
    """subjects: [{name, sha256}]; cells: [{id, node, digest}]; manifests: every node involved."""
    by_digest = {m["node"]["digest"]: m for m in manifests}
    cell_params = []
    for c in cells:
        m = by_digest[c["digest"]]
        cell_params.append({"id": c["id"], "node": m["node"]["key"], "model": m["model"]["name"],
                            "backend": m.get("backend"), "quant": m.get("quant"), "target": m.get("target"),
                            "options": m.get("options"), "thresholds": m.get("thresholds")})
    epochs = sorted({m.get("source_date_epoch") for m in manifests if m.get("source_date_epoch") is not None})
    deps = _model_dependencies(manifests) + _image_dependencies(manifests)
    commit = code_commit()
    if commit:
        deps.append(commit)
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": s["name"], "digest": {"sha256": s["sha256"]}} for s in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"matrix": matrix, "cells": cell_params},
                "internalParameters": {
                    "builder_version": VERSION, "source_date_epoch": epochs[0] if len(epochs) == 1 else epochs,
                    "nodes": {m["node"]["key"]: m["node"]["digest"] for m in manifests}},
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": builder_id(), "version": {"buildmatrix": VERSION}},
                "byproducts": byproducts,
            },
        },
    }


@lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate(doc: dict) -> None:
    """Fail closed: a statement that does not match the in-toto v1 + SLSA v1 schema is never written."""
    import jsonschema

    errors = sorted(jsonschema.Draft202012Validator(schema()).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise RuntimeError(f"provenance statement invalid at {where}: {e.message} (a buildmatrix bug)")
