"""Cells -> DAG of nodes with inputs digests and cache state.

inputs digest of a node = sha256 of (model snapshot digest, backend, kind, params (quant, target,
options, thresholds), toolchain image tag (a hash of its rendered Dockerfile and context), builder
version + hash of the code the node runs, parents' inputs digests). Same digest => cache hit.
Parents enter by their inputs digest (known before they run; our nodes are reproducible, so it
determines their output); their output sha256s are recorded in each manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

from builders import VERSION, archs, backends, images
from builders.backends.base import REFERENCE, Cell, ModelRef, NodeDef
from builders.errors import ModelError
from builders.matrix import Matrix, Selection
from builders.models import nodes as model_nodes
from builders.models.resolve import resolve_hub, resolve_local
from builders.models.tiny import tiny_config
from builders.store import Lookup
from builders.targets import TARGETS

PKG = Path(__file__).resolve().parent
SOURCE_DATE_EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "315532800"))  # 1980-01-01: valid for zip too
COMMON_CODE = ("archs.py", "contract.py", "node.py", "backends/base.py", "backends/__init__.py", "verify/metrics.py",
               "verify/budget.py", "verify/thresholds.py", "errors.py", "rss.py")


@dataclass
class PlanNode:
    """A planned node. It is identified by `digest` (Plan.nodes, PlanCell.nodes and `parents` hold digests);
    `key` is its printable name in this plan, for display only (the NodeDef's key, or key@<digest8> when
    another node of this plan has that name with other inputs)."""

    node: NodeDef
    digest: str
    image_tag: str
    model: str  # model name
    cells: list[str] = field(default_factory=list)
    cached: bool = False  # this root's entry passed its check (store.Lookup "cached")
    lookup: Lookup = field(default_factory=lambda: Lookup("absent"))  # "damaged"/"import" are resolved by the build
    key: str = ""  # set by the planner ("" = node.key)
    parents: dict[str, str] = field(default_factory=dict)  # role -> digest of the parent PlanNode

    def __post_init__(self):
        self.key = self.key or self.node.key


@dataclass
class PlanCell:
    cell: Cell
    nodes: list[str]  # node digests in run order; the last is the artifact node
    status: str = "planned"  # planned | cached | unsupported | unavailable | ci-runner
    reason: str | None = None


@dataclass
class Plan:
    cells: list[PlanCell]
    nodes: dict[str, PlanNode]  # digest -> node, topological order
    models: dict[str, ModelRef]
    model_dirs: dict[str, Path]  # host snapshot dir for local/hub models (tiny: from the store)
    model_files: dict[str, dict[str, str]]

    def to_json(self) -> dict:
        """Nodes are named by digest (a cell's `nodes`, a node's `parents`, a model's `generated_by`); `key`
        and a cell's `artifact_node` are the printable names."""
        return {
            "schema": 2,
            "builder_version": VERSION,
            "models": {n: {"source": m.source, "revision": m.revision, "digest": m.digest, "arch": m.arch,
                           "generated_by": m.node} for n, m in sorted(self.models.items())},
            "cells": [{"id": c.cell.id, "model": c.cell.model, "backend": c.cell.backend, "quant": c.cell.quant,
                       "target": c.cell.target, "status": c.status, "reason": c.reason, "nodes": c.nodes,
                       "artifact_node": self.nodes[c.nodes[-1]].key if c.nodes else None,
                       "digest": self.nodes[c.nodes[-1]].digest if c.nodes else None} for c in self.cells],
            "nodes": [{"key": p.key, "kind": p.node.kind, "backend": p.node.backend, "digest": p.digest,
                       "image": p.image_tag, "parents": dict(sorted(p.parents.items())),
                       "publish": p.node.publish, "cached": p.cached, "cells": p.cells,
                       "cache": p.lookup.status, "cache_problem": p.lookup.problem,
                       "import_from": str(p.lookup.source) if p.lookup.source else None,
                       "unavailable": p.node.unavailable, "params": p.node.params} for p in self.nodes.values()],
            "summary": {"cells": len(self.cells), "nodes": len(self.nodes),
                        "cached": sum(p.cached for p in self.nodes.values()),
                        "to_import": sum(p.lookup.status == "import" for p in self.nodes.values()),
                        "damaged": sum(p.lookup.status == "damaged" for p in self.nodes.values()),
                        "to_run": sum(not p.cached for p in self.nodes.values())},
        }


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


_code_cache: dict[tuple, str] = {}
CODE_SUFFIXES = (".py", ".mjs")  # .mjs: builders/backends/mlc/webgpu_run.mjs (the webgpu run's Node side)


def node_code(backend, kind: str) -> tuple[str, ...]:
    """The source paths a node of this kind runs: its backend's `code` and the kind's own `kind_code`."""
    return tuple(backend.code) + tuple(getattr(backend, "kind_code", {}).get(kind, ()))


def code_hash(paths: tuple[str, ...]) -> str:
    """Hash of the builder's own source files a node runs (all .py, and the .mjs a node hands to Node, under a
    listed directory)."""
    key = tuple(sorted(set(COMMON_CODE + tuple(paths))))
    if key not in _code_cache:
        h = hashlib.sha256(VERSION.encode())
        for rel in key:
            p = PKG / rel
            files = sorted(f for f in p.rglob("*") if f.suffix in CODE_SUFFIXES) if p.is_dir() else [p]
            for f in files:
                if f.is_file():
                    h.update(f.relative_to(PKG).as_posix().encode() + b"\0" + f.read_bytes())
        _code_cache[key] = h.hexdigest()
    return _code_cache[key]


class Planner:
    def __init__(self, matrix: Matrix, store, hf_token: str | None = None, offline: bool = False,
                 executor: str = "docker"):
        self.matrix = matrix
        self.executor = executor
        self.store = store
        self.hf_token = hf_token
        self.offline = offline
        self.nodes: dict[str, PlanNode] = {}  # a node's identity is its inputs digest
        self._keys: set[str] = set()  # printable names taken
        self._image_tags: dict[str, str] = {}
        self.models: dict[str, ModelRef] = {}
        self.model_dirs: dict[str, Path] = {}
        self.model_files: dict[str, dict] = {}

    # -- models ---------------------------------------------------------------------------------
    def _resolve_models(self, sel: Selection) -> None:
        cache = self.store.hashes
        for name, src in sel.models.items():
            if src.kind == "tiny":
                nd = model_nodes.tiny_node(src.arch)
                pn = self._add(nd, {}, model=name, model_digest="")
                config = tiny_config(src.arch)
                self.models[name] = ModelRef(name, src.source, f"tiny-{pn.digest[:7]}", pn.digest, config,
                                             config["architectures"][0], node=pn.digest)
            elif src.kind == "synthetic":
                nd = model_nodes.synthetic_node(src.arch)
                pn = self._add(nd, {}, model=name, model_digest="")
                config = nd.params["config"]
                self.models[name] = ModelRef(name, src.source, f"synthetic-{pn.digest[:7]}", pn.digest, config,
                                             config["architectures"][0], node=pn.digest)
            elif src.kind == "local":
                ref, path, files = resolve_local(src, cache, self.store.root / ".models")
                self.models[name], self.model_dirs[name], self.model_files[name] = ref, path, files
            else:
                ref, path, files = resolve_hub(src, cache, self.store.root / ".models", self.hf_token, self.offline)
                self.models[name], self.model_dirs[name], self.model_files[name] = ref, path, files
        self.store.save_hashes()

    # -- nodes ----------------------------------------------------------------------------------
    def _add(self, nd: NodeDef, parents: dict[str, PlanNode], model: str, model_digest: str) -> PlanNode:
        """The PlanNode of `nd` with these resolved parents: the existing one if a node of equal inputs
        digest is planned (whoever declared it), else a new one."""
        backend = backends.get(nd.backend)
        if self.executor == "native":  # the host's own tools, not an image: never shares a cache entry
            tag = f"native:{platform.machine()}-{platform.system()}-py{platform.python_version()}"
        else:  # rendered once per image and plan: the matrix's pins do not change while planning
            if nd.image not in self._image_tags:
                self._image_tags[nd.image] = images.image_tag(nd.image, self.matrix.images)
            tag = self._image_tags[nd.image]
        digest = _sha({"source_date_epoch": SOURCE_DATE_EPOCH,
            "builder": VERSION, "code": code_hash(node_code(backend, nd.kind)), "kind": nd.kind, "backend": nd.backend,
            "params": nd.params, "image": tag, "model": model_digest if nd.uses_model else "",
            "parents": {r: p.digest for r, p in sorted(parents.items())},
        })
        if digest in self.nodes:
            return self.nodes[digest]
        key = nd.key if nd.key not in self._keys else f"{nd.key}@{digest[:8]}"  # same name, other inputs
        pn = PlanNode(nd, digest, tag, model, key=key, parents={r: p.digest for r, p in parents.items()})
        pn.lookup = self.store.lookup(digest)
        pn.cached = pn.lookup.status == "cached"
        self.nodes[digest] = pn
        self._keys.add(key)
        return pn

    def _declared(self, nd: NodeDef, model: ModelRef, ref: PlanNode, done: dict[int, PlanNode]) -> PlanNode:
        """Plan a node a backend declared, its NodeDef parents first; REFERENCE is the model's reference node."""
        declared = id(nd)
        if declared in done:
            return done[declared]
        parents: dict[str, PlanNode] = {}
        for role, parent in nd.parents.items():
            if parent is REFERENCE:
                parents[role] = ref
            elif isinstance(parent, NodeDef):
                parents[role] = self._declared(parent, model, ref, done)
            else:
                raise TypeError(f"{nd.backend} backend: node {nd.key} parent {role}={parent!r} must be a NodeDef or "
                                "REFERENCE (builders/backends/base.py)")
        if nd.verify_quant is not None:
            nd = replace(nd, params={**nd.params,
                                     "thresholds": self.matrix.thresholds_for(nd.backend, nd.verify_quant)})
        done[declared] = pn = self._add(nd, parents, model.name, model.digest)
        return pn

    def _reference(self, model: ModelRef) -> PlanNode:
        nd = model_nodes.reference_node(model.name)
        return self._add(nd, {}, model.name, model.digest)

    def plan(self, sel: Selection) -> Plan:
        self._resolve_models(sel)
        cells: list[PlanCell] = []
        for cell in sel.cells:
            model = self.models[cell.model]
            backend = backends.get(cell.backend)
            if cell.target not in backend.targets:
                supported = ", ".join(t for t in TARGETS if t in backend.targets)
                cells.append(PlanCell(cell, [], "unsupported",
                                      f"{cell.backend} builds no artifact for {cell.target} (its targets: {supported})"))
                continue
            reason = archs.unsupported_reason(cell.backend, model.arch)
            if reason and archs.family(model.arch) is None:  # no family at all: the model is the mistake
                raise ModelError(f"model '{model.source}': {reason}")
            if reason:  # a known family this backend does not build: listed, like a target it lacks
                cells.append(PlanCell(cell, [], "unsupported", reason))
                continue
            where = self.matrix.options_where(cell.id, cell.backend)
            cell = replace(cell, options=backend.normalize_options(cell.options, where), options_where=where)
            reason = backend.unsupported(cell, model)
            if reason:
                cells.append(PlanCell(cell, [], "unsupported", reason))
                continue
            reason = backend.unavailable(cell)
            if reason:
                cells.append(PlanCell(cell, [], "unavailable", reason))
                continue
            built_on_ci = getattr(backend, "built_on_ci", None)
            reason = built_on_ci(cell, self.matrix.images) if built_on_ci else None
            if reason:  # neither a failure nor verified: its toolchain builds on CI runners only
                cells.append(PlanCell(cell, [], "ci-runner", reason))
                continue
            ref = self._reference(model)
            done: dict[int, PlanNode] = {}
            digests = [self._declared(nd, model, ref, done).digest for nd in backend.expand(cell, model)]
            pc = PlanCell(cell, digests)
            for d in digests:
                self.nodes[d].cells.append(cell.id)
            if all(self.nodes[d].cached for d in digests):
                pc.status = "cached"
            cells.append(pc)
        return Plan(cells, self.nodes, self.models, self.model_dirs, self.model_files)


def make_plan(matrix: Matrix, sel: Selection, store, hf_token: str | None = None, offline: bool = False,
              executor: str = "docker") -> Plan:
    return Planner(matrix, store, hf_token, offline, executor).plan(sel)
