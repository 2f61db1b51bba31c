"""Plan -> CI jobs, computed the same way when the workflow is generated and inside its plan job.

Stage 1 (`models`): one group per model builds the nodes every backend of that model shares (the
generated model, the reference logits). Stage 2 (`build_<images>_<n>`): cells whose remaining nodes
overlap form one group (a GGUF Q4_K_M cell with its F16 parent, all targets of one MLC quant with their
shared weights), so shared work runs once; groups are sorted into jobs by the toolchain images they run
in. Stage 3 (`finish_<n>`, macOS): the groups' cells whose artifact is target-specific and whose target
needs macOS. Cells that are unsupported, unavailable or need an unavailable node get no runner at all.
Each job's matrix holds at most MAX_ENTRIES groups; more are split into numbered jobs, in order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from builders.targets import TARGETS

MAX_ENTRIES = 256  # GitHub's limit on the jobs one matrix may generate
MODEL_BACKEND = "model"  # nodes of this backend family form stage 1


@dataclass
class Group:
    id: str
    stage: str  # models | build
    nodes: list[str]  # digests of the nodes this group builds and hands on, in plan order
    models: list[str]  # stage 1: the model it builds; stage 2: the models whose stage-1 nodes it needs
    images: list[str]  # toolchain images its nodes run in
    cells: list[str] = field(default_factory=list)  # stage 2: cells it builds
    macos_cells: list[str] = field(default_factory=list)  # stage 2: cells the macOS job finishes

    @property
    def key(self) -> str:
        """Cache key of the group's outputs: its nodes' inputs digests (same digests = same outputs)."""
        return hashlib.sha256("\n".join(sorted(self.nodes)).encode()).hexdigest()[:24]

    @property
    def artifact(self) -> str:
        return f"store-{self.id}"


@dataclass
class Layout:
    groups: dict[str, Group]
    jobs: dict[str, list[str]]  # job id -> group ids, in order
    skipped: list[dict]  # cells without a runner: id, status, reason
    hub_models: list[str]  # models resolved from the hub (their jobs get HF_TOKEN)
    images: dict[str, str]  # image name -> content-hash tag, every image a job needs

    def group(self, gid: str) -> Group:
        from builders.errors import MatrixError

        if gid not in self.groups:
            raise MatrixError(f"--group {gid}: no such CI group in this plan (groups: {', '.join(self.groups)}); "
                              "the workflow was generated for another matrix or filters - rerun `invoke ci`")
        return self.groups[gid]

    @property
    def fingerprint(self) -> str:
        """What the generated YAML depends on: job ids, their groups, image tags. The plan job compares it."""
        blob = json.dumps({"jobs": self.jobs, "images": self.images,
                           "hub": self.hub_models}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def matrix(self, job: str) -> dict:
        """The `strategy.matrix` of a job, as its plan-job output (`fromJSON`)."""
        entries = []
        for gid in self.jobs[job]:
            g = self.groups[gid]
            needs = [self.groups[f"{m}.{MODEL_BACKEND}"].artifact for m in g.models] if g.stage == "build" else []
            if job.startswith("finish"):
                needs.append(g.artifact)
                cells = g.macos_cells
            else:
                cells = g.cells
            entries.append({"group": gid, "key": g.key, "cells": ",".join(cells) or gid,
                            "needs": _pattern(needs)})
        return {"include": entries}

    def outputs(self) -> dict[str, str]:
        """Plan-job outputs: one compact JSON matrix per job, plus the fingerprint."""
        out = {job: json.dumps(self.matrix(job), separators=(",", ":")) for job in self.jobs}
        out["fingerprint"] = self.fingerprint
        return out


def _pattern(names: list[str]) -> str:
    """A download-artifact `pattern` (minimatch) for these artifact names; `-` when there are none."""
    names = sorted(set(names))
    if not names:
        return "-"
    return names[0] if len(names) == 1 else "{" + ",".join(names) + "}"


def _closure(digests: list[str], nodes: dict, generated_by: dict) -> set[str]:
    """Digests of these nodes and everything they need: parents, the generating node of their model."""
    seen: set[str] = set()
    stack = list(digests)
    while stack:
        d = stack.pop()
        if d in seen:
            continue
        seen.add(d)
        n = nodes[d]
        stack.extend(n["parents"].values())
        gen = generated_by.get(n["_model"])
        if gen and gen != d:
            stack.append(gen)
    return seen


def _shard(prefix: str, gids: list[str]) -> dict[str, list[str]]:
    return {f"{prefix}_{i // MAX_ENTRIES + 1}": gids[i:i + MAX_ENTRIES] for i in range(0, len(gids), MAX_ENTRIES)}


def compute(plan: dict, node_models: dict[str, str]) -> Layout:
    """Layout of `plan` (Plan.to_json()); node_models maps node digest -> the model it was planned for.
    Nodes are handled by digest (their identity); their keys only name them in messages."""
    nodes = {n["digest"]: {**n, "_model": node_models.get(n["digest"])} for n in plan["nodes"]}
    models = plan["models"]
    generated_by = {name: m["generated_by"] for name, m in models.items() if m["generated_by"]}
    skipped, cells = [], []
    for c in plan["cells"]:
        if c["status"] not in ("planned", "cached"):
            skipped.append({"id": c["id"], "status": c["status"], "reason": c["reason"]})
            continue
        closure = _closure(c["nodes"], nodes, generated_by)
        bad = sorted(nodes[d]["key"] for d in closure if nodes[d]["unavailable"])
        if bad:
            why = next(nodes[d]["unavailable"] for d in closure if nodes[d]["key"] == bad[0])
            skipped.append({"id": c["id"], "status": "unavailable", "reason": f"needs {bad[0]}: {why}"})
            continue
        cells.append((c, closure))

    groups: dict[str, Group] = {}
    stage1 = sorted({d for _, cl in cells for d in cl if nodes[d]["backend"] == MODEL_BACKEND})
    for model in sorted({nodes[d]["_model"] for d in stage1}):
        digests = [d for d in plan_order(plan) if d in stage1 and nodes[d]["_model"] == model]
        g = Group(f"{model}.{MODEL_BACKEND}", "models", digests, [model],
                  sorted({_image(nodes[d]) for d in digests}))
        groups[g.id] = g

    # union cells whose stage-2 nodes overlap
    owner: dict[str, int] = {}
    parent = list(range(len(cells)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, (_, cl) in enumerate(cells):
        for d in cl:
            if nodes[d]["backend"] == MODEL_BACKEND:
                continue
            if d in owner:
                parent[find(i)] = find(owner[d])
            else:
                owner[d] = i
    components: dict[int, list[int]] = {}
    for i in range(len(cells)):
        components.setdefault(find(i), []).append(i)

    order = plan_order(plan)
    by_images: dict[str, list[str]] = {}
    for members in components.values():
        cs = [cells[i][0] for i in members]
        closure = set().union(*(cells[i][1] for i in members))
        digests = [d for d in order if d in closure and nodes[d]["backend"] != MODEL_BACKEND]
        gid = ".".join("+".join(sorted({c[f]: None for c in cs}, key=str)) for f in ("model", "backend", "quant"))
        while gid in groups:
            gid += "~"
        macos = [c["id"] for c in cs if TARGETS[c["target"]].needs_macos and "target" in nodes[c["nodes"][-1]]["params"]]
        g = Group(gid, "build", digests,
                  sorted({nodes[d]["_model"] for d in closure if nodes[d]["backend"] == MODEL_BACKEND}),
                  sorted({_image(nodes[d]) for d in digests}), [c["id"] for c in cs], macos)
        groups[gid] = g
        by_images.setdefault("-".join(g.images), []).append(gid)

    jobs: dict[str, list[str]] = {}
    jobs.update(_shard("models", [g for g in groups if groups[g].stage == "models"]))
    for images_name in sorted(by_images):
        jobs.update(_shard(f"build_{images_name}", sorted(by_images[images_name])))
    jobs.update(_shard("finish", sorted(g for g in groups if groups[g].macos_cells)))
    hub = sorted(n for n, m in models.items() if not m["generated_by"] and not str(m["revision"]).startswith("local-"))
    tags = {nodes[d]["image"].split("/")[-1].split(":")[0]: nodes[d]["image"] for g in groups.values() for d in g.nodes}
    return Layout(groups, jobs, skipped, hub, dict(sorted(tags.items())))


def _image(node: dict) -> str:
    """Image name of a node (its tag is `buildmatrix/<name>:<hash>`)."""
    return node["image"].split("/")[-1].split(":")[0]


def plan_order(plan: dict) -> list[str]:
    return [n["digest"] for n in plan["nodes"]]


def from_plan(p) -> Layout:
    """Layout of a builders.plan.Plan."""
    return compute(p.to_json(), {d: pn.model for d, pn in p.nodes.items()})
