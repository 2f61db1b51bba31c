"""The macOS finisher: takes the Linux jobs' promoted nodes and runs exactly the steps their manifests
list as `deferred`, natively, on a copy of the outputs (the content store is never modified).

    <out>/finished/<cell>/        the node's outputs plus what the deferred steps made (.mlmodelc, .dylib)
    <out>/finished/<cell>.json    what ran, its checks, every output's size and sha256

A deferred step with no finisher here, a node that was not handed off, or a check that fails is an
error (exit 1) - never a silent pass. A cell whose manifest defers nothing is recorded as such.
"""

from __future__ import annotations

import platform
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from builders.backends.base import NodeContext
from builders.contract import ModelInfo, NodeSpec, ParentInfo
from builders.errors import NodeFailed
from builders.plan import SOURCE_DATE_EPOCH
from builders.store import list_outputs, write_json_atomic

MACH_O_64 = b"\xcf\xfa\xed\xfe"  # little-endian 64-bit Mach-O magic
MH_DYLIB = 6


def _coreml_compile(ctx: NodeContext) -> dict:
    """Step 6 of the coreml node (.mlmodelc per package), then the Core ML smoke test of step 8."""
    from builders.backends.coreml import macos, steps
    from builders.backends.coreml.layout import layout_of
    from builders.verify.metrics import load_reference

    steps.step_compile(ctx)
    if any(d.get("step") == "compile" for d in ctx.result.get("deferred", [])):
        raise NodeFailed("compile: still deferred - the finisher must run on macOS")
    smoke = macos.smoke(ctx.out, layout_of(ctx.params, ctx.model_dir), load_reference(ctx.inputs["reference"]))
    if not smoke["matches_reference_tokens"]:
        raise NodeFailed(f"coreml smoke test: generated {smoke['generated_ids']} differs from the reference")
    return {"compiled": ctx.result.get("compiled"), "coreml_smoke": smoke}


def dylib_check(path: Path) -> None:
    """The linked file is a 64-bit Mach-O dynamic library."""
    head = Path(path).read_bytes()[:16]
    if head[:4] != MACH_O_64 or int.from_bytes(head[12:16], "little") != MH_DYLIB:
        raise NodeFailed(f"link: {Path(path).name} is not a 64-bit Mach-O dylib")


def _mlc_link(ctx: NodeContext) -> dict:
    """The deferred link of a metal/metal_x86_64 library: the Linux-built .tar of Mach-O objects into a
    .dylib (TVM runtime symbols stay undefined: the app's runtime provides them), checked as Mach-O."""
    tars = sorted(ctx.out.glob("*.tar"))
    if len(tars) != 1:
        raise NodeFailed(f"link: expected one .tar of objects in the node outputs, found {len(tars)}")
    arch = "x86_64" if ctx.params.get("target") == "metal_x86_64" else "arm64"
    dylib = tars[0].with_suffix(".dylib")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.unpack_archive(str(tars[0]), tmp, "tar")
        objects = sorted(str(p) for p in Path(tmp).rglob("*.o"))
        if not objects:
            raise NodeFailed(f"link: {tars[0].name} holds no .o objects")
        cmd = ["xcrun", "clang", "-dynamiclib", "-arch", arch, "-undefined", "dynamic_lookup", "-o", str(dylib),
               *objects]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as e:
            raise NodeFailed(f"link: {cmd[0]} cannot run here ({e.strerror}): the finisher runs on macOS") from None
        if r.returncode:
            raise NodeFailed(f"link: {' '.join(cmd[:6])} ... failed: {(r.stderr or r.stdout).strip()[-300:]}")
    dylib_check(dylib)
    return {"linked": dylib.name, "arch": arch}


# (backend, deferred step) -> what runs it on macOS
FINISHERS: dict[tuple[str, str], Callable[[NodeContext], dict]] = {
    ("coreml", "compile"): _coreml_compile,
    ("mlc", "link"): _mlc_link,
}


def _available(store, pn) -> bool:
    try:
        _present(store, pn)
        return True
    except NodeFailed:
        return False


def _present(store, pn):
    """The plan node, its entry in this store: imported from the handed-off stores when it is not here yet
    (re-hashed against their manifest), else NodeFailed."""
    if not store.has(pn.digest):
        source, refused = store.import_node(pn.digest)
        if source is None:
            why = f" ({refused[0]})" if refused else ""
            raise NodeFailed(f"node {pn.key} ({pn.digest[:12]}) was not handed off by the Linux jobs{why}")
    return pn


def finish_cell(store, p, cell_id: str, out: Path) -> dict:
    """Run the deferred steps of one cell's artifact node; returns its record (status ok|failed)."""
    pc = next((c for c in p.cells if c.cell.id == cell_id), None)
    record: dict = {"cell": cell_id, "host": f"{platform.system()}-{platform.machine()}", "ran": [], "checks": {}}
    try:
        if pc is None or not pc.nodes:
            raise NodeFailed("not a buildable cell of this plan")
        pn = p.nodes[pc.nodes[-1]]
        record.update(node=pn.key, digest=pn.digest)
        _present(store, pn)
        manifest = store.manifest(pn.digest)
        deferred = manifest.get("deferred", [])
        record["deferred"] = deferred
        dest = out / "finished" / cell_id
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(store.out_dir(pn.digest), dest)
        for f in [dest, *dest.rglob("*")]:  # store files are read-only; the finisher writes next to them
            f.chmod(f.stat().st_mode | stat.S_IWUSR)
        # what a deferred step may read: the node's parents and model, imported when they were handed off
        # (a step that needs one that was not fails below with its name)
        inputs: dict[str, Path] = {}
        parents: dict[str, ParentInfo] = {}
        for role, digest in pn.parents.items():
            parent = p.nodes[digest]
            if _available(store, parent):
                inputs[role] = store.out_dir(digest)
                parents[role] = ParentInfo(parent.key, digest, store.manifest(digest)["model"]["name"])
        model = p.models[pn.model]
        if pn.node.uses_model:
            if not model.node:
                inputs["model"] = p.model_dirs[pn.model]
            elif _available(store, p.nodes[model.node]):
                inputs["model"] = store.out_dir(model.node)
        with tempfile.TemporaryDirectory() as work:
            # the same typed spec a build hands its nodes (builders/contract.py), with this host's paths
            spec = NodeSpec(
                key=pn.node.key, kind=pn.node.kind, backend=pn.node.backend, digest=pn.digest,
                params=pn.node.params, model=ModelInfo(model.name, model.source, model.revision, model.digest),
                inputs={r: str(d) for r, d in inputs.items()}, parents=parents, out=str(dest), work=work,
                result=str(Path(work) / "result.json"), env={"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)})
            ctx = NodeContext(spec.to_json(), dest, Path(work), inputs)
            ctx.result = {"deferred": list(deferred)}
            for d in deferred:
                fn = FINISHERS.get((pn.node.backend, d.get("step")))
                if fn is None:
                    raise NodeFailed(f"deferred step '{d.get('step')}' of the {pn.node.backend} backend has no "
                                     "macOS finisher")
                try:
                    record["checks"][d["step"]] = fn(ctx)
                except KeyError as e:
                    raise NodeFailed(f"deferred step '{d['step']}' needs input {e} that the Linux jobs did not "
                                     "hand off") from None
                record["ran"].append(d["step"])
        record["outputs"] = list_outputs(dest)
        record["status"] = "ok"
    except NodeFailed as e:
        record.update(status="failed", reason=str(e))
    (out / "finished").mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "finished" / f"{cell_id}.json", record)
    return record


def run(store, p, cells: list[str], out: Path, log=print) -> int:
    failed = 0
    for cell_id in cells:
        rec = finish_cell(store, p, cell_id, Path(out))
        ran = ", ".join(rec["ran"]) or "nothing deferred"
        log(f"{rec['status']:6s} {cell_id}: {rec.get('reason') or ran}")
        failed += rec["status"] != "ok"
    return 1 if failed else 0
