"""Run a plan: ensure images, run each uncached node with an executor, promote, publish, summarize.

One failing node fails only the cells that need it; everything else still builds. Ctrl-C stops the
running node (the executor removes its container) and leaves nothing partial in the store.

Nothing is served unchecked: a store entry that failed its check in the plan is moved aside and its node
rebuilt; an import from a `--cache-from` root is re-hashed as it is copied, and a refused one is rebuilt;
a node whose run wrote no outputs, or misses one its kind declares (NodeDef.outputs), fails unpromoted.
A build holds its output root's lock (builders/lock.py) and first stops containers a killed build left
writing into the root's staging dirs, resetting those dirs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from builders import images
from builders.contract import ContractError, ModelInfo, NodeSpec, ParentInfo, StepResult
from builders.errors import EXIT_FAILED, EXIT_OK, NoDockerEngine, ToolchainError
from builders.executors import Mount, get_executor
from builders.manifest import make_manifest, rev_short
from builders.outputs import check_declared
from builders.plan import SOURCE_DATE_EPOCH, Plan, PlanNode
from builders.store import Store, list_outputs



@dataclass
class NodeOutcome:
    status: str  # cached | built | failed | skipped
    reason: str | None = None
    seconds: float = 0.0


@dataclass
class CellOutcome:
    id: str
    status: str  # built | cached | failed | unsupported | unavailable | ci-runner (built on CI runners)
    seconds: float = 0.0
    artifact: str | None = None
    reason: str | None = None
    verification: dict | None = None


@dataclass
class BuildReport:
    cells: list[CellOutcome]
    nodes: dict[str, NodeOutcome] = field(default_factory=dict)  # node digest -> outcome
    index: Path | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if any(c.status in ("failed", "unavailable") for c in self.cells) else EXIT_OK


class Builder:
    def __init__(self, plan: Plan, store: Store, matrix, executor: str = "docker", steps: dict | None = None,
                 echo: bool = False, log=print):
        self.plan, self.store, self.matrix = plan, store, matrix
        self.executor_name = executor
        self.executor = None
        self.steps = {k: v for k, v in (steps or {}).items() if v}
        self.echo = echo
        self.log = log
        self.outcomes: dict[str, NodeOutcome] = {}  # node digest -> outcome
        self.image_info: dict[str, dict] = {}
        self.image_errors: dict[str, str] = {}

    # -- selection of what runs -------------------------------------------------------------------
    def _forced(self) -> set[str]:
        """With --only/--restart, the cells' artifact nodes run again even if cached."""
        if not self.steps:
            return set()
        return {pc.nodes[-1] for pc in self.plan.cells if pc.nodes}

    def _deps(self, pn: PlanNode) -> list[str]:
        """Digests of the nodes this one needs built: its parents and its model's generating node."""
        deps = list(pn.parents.values())
        model = self.plan.models[pn.model]
        if model.node and model.node != pn.digest:
            deps.append(model.node)
        return deps

    def _ensure_images(self, to_run: list[PlanNode]) -> None:
        if self.executor_name != "docker":
            return
        names = sorted({pn.node.image for pn in to_run if not pn.node.unavailable})
        if not names:
            return
        for name in names:  # one at a time so one broken image fails only its own nodes
            try:
                self.image_info.update(images.ensure([name], self.matrix.images, log=self.log))
            except NoDockerEngine:
                raise
            except ToolchainError as e:
                self.image_errors[name] = str(e)

    # -- one node ---------------------------------------------------------------------------------
    def _run_node(self, pn: PlanNode) -> NodeOutcome:
        nd = pn.node
        if nd.unavailable:
            return NodeOutcome("failed", nd.unavailable)
        if nd.image in self.image_errors:
            return NodeOutcome("failed", f"toolchain image '{nd.image}' unavailable: {self.image_errors[nd.image]}")
        forced = pn.digest in self._forced()
        stage = self.store.staging(pn.digest, reuse_store=forced)
        (stage / "result.json").unlink(missing_ok=True)
        mounts = [Mount(stage, "/node", False)]
        inputs = {}
        model = self.plan.models[pn.model]
        parents_info: dict[str, dict] = {}
        parents_spec: dict[str, ParentInfo] = {}  # what a step may know of its parents (which model one was built for)
        model_files = self.plan.model_files.get(pn.model)  # the snapshot's files (local and hub models)
        if nd.uses_model:
            if model.node:
                model_dir = self.store.out_dir(self.plan.nodes[model.node].digest)
                model_files = {o["path"]: o["sha256"] for o in  # tiny: the generated files
                               self.store.manifest(self.plan.nodes[model.node].digest)["outputs"]}
            else:
                model_dir = self.plan.model_dirs[pn.model]
            mounts.append(Mount(model_dir, "/in/model", True))
            inputs["model"] = "/in/model"
        for role, pdigest in sorted(pn.parents.items()):
            parent = self.plan.nodes[pdigest]
            mounts.append(Mount(self.store.out_dir(parent.digest), f"/in/{role}", True))
            inputs[role] = f"/in/{role}"
            pm = self.store.manifest(parent.digest)
            parents_info[role] = {"key": parent.key, "digest": parent.digest,
                                  "outputs": {o["path"]: o["sha256"] for o in pm["outputs"]}}
            parents_spec[role] = ParentInfo(parent.key, parent.digest, pm["model"]["name"])
        spec = NodeSpec(
            key=nd.key, kind=nd.kind, backend=nd.backend, digest=pn.digest, params=nd.params,
            model=ModelInfo(model.name, model.source, model.revision, model.digest),
            inputs=inputs, parents=parents_spec, out="/node/out", work="/node/work", result="/node/result.json",
            steps=dict(self.steps) if forced else {},
            env={"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "PYTHONHASHSEED": "0"},
        ).to_json()
        image = self.image_info.get(nd.image, {"name": nd.image, "ref": pn.image_tag})
        if self.executor_name == "native":
            image = {"name": "native", "ref": pn.image_tag}
        t0 = time.monotonic()
        rc = self.executor.run(spec, mounts, image.get("ref"), stage / "log.txt")
        seconds = time.monotonic() - t0
        result_path = stage / "result.json"
        if not result_path.is_file():
            return NodeOutcome("failed", f"node process exited with {rc} and wrote no result; log: {stage / 'log.txt'}",
                               seconds)
        try:
            result = StepResult.from_json(json.loads(result_path.read_text()), str(result_path))
        except (ValueError, ContractError) as e:
            return NodeOutcome("failed", f"{e} (log: {stage / 'log.txt'})", seconds)
        if result.status != "ok":
            return NodeOutcome("failed", f"{result.reason} (log: {stage / 'log.txt'})", seconds)
        try:
            outputs = list_outputs(stage / "out")
        except ValueError as e:
            return NodeOutcome("failed", f"{e} (log: {stage / 'log.txt'})", seconds)
        wrong = check_declared(outputs, nd.outputs, nd.kind)
        if wrong:
            return NodeOutcome("failed", f"{wrong} (log: {stage / 'log.txt'})", seconds)
        manifest = make_manifest(pn, self.plan, result, {"name": nd.image, **image}, outputs, parents_info,
                                 model_files or {}, seconds, SOURCE_DATE_EPOCH)
        self.store.promote(pn.digest, manifest)
        self._publish(pn)
        return NodeOutcome("built", None, seconds)

    def _publish(self, pn: PlanNode) -> None:
        if pn.node.publish:
            model = self.plan.models[pn.model]
            self.store.publish(pn.digest, f"{model.name}/{rev_short(model)}/{pn.node.publish}")

    # -- the whole plan ---------------------------------------------------------------------------
    def _settle_cache(self, needed: set[str]) -> None:
        """Damaged entries moved aside (one line each), imports copied in after their check; what is left
        uncached runs."""
        for pn in self.plan.nodes.values():
            if pn.digest not in needed or pn.cached:
                continue
            found = pn.lookup
            if found.status == "damaged":
                where = self.store.set_aside(pn.digest, found.problem)
                self.log(f"[red]damaged[/] {pn.key} ({pn.digest[:12]}): {found.problem}; moved aside to {where}, "
                         "rebuilding")
            if found.source is not None:
                source, refused = self.store.import_node(pn.digest)
                for line in refused:
                    self.log(f"[red]refused import[/] {pn.key}: {line}; rebuilding")
                if source is not None:
                    pn.cached = True
                    self.log(f"[cyan]imported[/] {pn.key} from {source} (every file re-hashed)")

    def _stop_orphans(self, docker_needed: bool) -> None:
        """Containers of a killed earlier build on this root: stopped and removed, their staging dirs reset."""
        from builders.executors import docker as docker_exec

        if not docker_needed and not any((self.store.root / ".staging").glob(f"*/{docker_exec.MARKER}")):
            return
        try:
            staging = docker_exec.stop_orphans(self.store.root)
        except ToolchainError:  # no engine: nothing of it can still be running; the markers say what to reset
            staging = [m.parent for m in (self.store.root / ".staging").glob(f"*/{docker_exec.MARKER}")]
        for stage in staging:
            self.log(f"[yellow]orphan[/] a killed build's container wrote {stage}: stopped and removed, "
                     "staging dir reset")
            self.store.reset_staging(stage.name)
        if docker_needed:
            docker_exec.cleanup_stale()

    def run(self) -> BuildReport:
        forced = self._forced()
        order = list(self.plan.nodes.values())
        needed = self._needed()
        self._settle_cache(needed)
        to_run = [pn for pn in order if (not pn.cached or pn.digest in forced) and pn.digest in needed]
        self._stop_orphans(bool(to_run) and self.executor_name == "docker")
        if to_run:
            self._ensure_images(to_run)
            self.executor = get_executor(self.executor_name, echo=self.echo, limits=getattr(self.matrix, "containers", None))
        for pn in order:
            if pn.digest not in needed:
                continue
            if pn.cached and pn.digest not in forced:
                self.outcomes[pn.digest] = NodeOutcome("cached")
                self._publish(pn)  # keep the published copies right (cheap when unchanged: hash cache)
                continue
            failed = [d for d in self._deps(pn) if self.outcomes.get(d, NodeOutcome("failed")).status
                      not in ("cached", "built")]
            if failed:
                cause = self.outcomes.get(failed[0])
                why = cause.reason if cause and cause.reason else "it did not build"
                self.outcomes[pn.digest] = NodeOutcome("skipped", f"needs {self.plan.nodes[failed[0]].key}: {why}")
                continue
            self.log(f"[bold]run[/] {pn.key}  ({pn.node.kind}, {pn.digest[:12]})")
            self.outcomes[pn.digest] = outcome = self._run_node(pn)
            style = "green" if outcome.status == "built" else "red"
            self.log(f"[{style}]{outcome.status}[/] {pn.key} in {outcome.seconds:.1f}s"
                     + (f": {outcome.reason}" if outcome.reason else ""))
        return self._report()

    def _needed(self) -> set[str]:
        """Digests of the selected cells' nodes and everything they depend on."""
        needed: set[str] = set()
        stack = [d for pc in self.plan.cells for d in pc.nodes]
        while stack:
            d = stack.pop()
            if d in needed:
                continue
            needed.add(d)
            stack.extend(self._deps(self.plan.nodes[d]))
        return needed

    def _report(self) -> BuildReport:
        cells, index = [], []
        earlier = self.store.previous_index()
        for pc in self.plan.cells:
            if not pc.nodes:
                cells.append(CellOutcome(pc.cell.id, pc.status, reason=pc.reason))
                continue
            outs = [self.outcomes[d] for d in pc.nodes]
            bad = next((o for o in outs if o.status not in ("cached", "built")), None)
            seconds = sum(o.seconds for o in outs)
            last = self.plan.nodes[pc.nodes[-1]]
            if bad:
                cells.append(CellOutcome(pc.cell.id, "failed", seconds, reason=bad.reason))
                kept = self._kept_entry(earlier.get(pc.cell.id), bad.reason)
                if kept:
                    index.append(kept)
                continue
            manifest = self.store.manifest(last.digest)
            if not manifest.get("outputs"):  # never reached: promote and check refuse such entries
                cells.append(CellOutcome(pc.cell.id, "failed", seconds, reason=f"{last.key} has no outputs"))
                continue
            model = self.plan.models[last.model]
            publish = f"{model.name}/{rev_short(model)}/{last.node.publish}" if last.node.publish else None
            files = [{"path": f"{publish}/{o['path']}" if publish else f".store/{last.digest}/out/{o['path']}",
                      "size": o["size"], "sha256": o["sha256"]} for o in manifest["outputs"]]
            status = "built" if any(o.status == "built" for o in outs) else "cached"
            main = files[0]["path"] if len(files) == 1 else (publish or files[0]["path"])
            cells.append(CellOutcome(pc.cell.id, status, seconds, artifact=main,
                                     verification=manifest.get("verification")))
            index.append({"cell": pc.cell.id, "node": last.key, "digest": last.digest,
                          "manifest": f".store/{last.digest}/manifest.json", "files": files,
                          "verification": manifest.get("verification"), "deferred": manifest.get("deferred", [])})
        report = BuildReport(cells, self.outcomes)
        report.index = self.store.write_index(index)
        self.store.save_hashes()
        return report

    def _kept_entry(self, entry: dict | None, reason: str | None) -> dict | None:
        """A failed cell's entry of the previous index.json, kept (never lose what was built) when its node is
        still in the store; marked `status: earlier` with why, so a release refuses it unless left out."""
        if not entry or not isinstance(entry.get("digest"), str) or not self.store.has(entry["digest"]):
            return None
        return {**entry, "status": "earlier", "kept_because": f"this build's run of the cell failed: {reason}"}
