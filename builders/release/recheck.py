"""`invoke release --check`: rebuild every cell of a release from nothing and compare byte for byte.

The cells are rebuilt into a fresh output root with no cache to import from (every node runs again:
the tiny model is trained again, the reference logits recomputed, every conversion redone). Then, for
every node the release lists, each output file's sha256 is compared with the release's manifest, and
the reproducible part of the rebuilt manifest with the release's copy. A differing file is named and,
when `diffoscope` is installed, compared with it (the report is written next to the rebuild). Finally
the rebuilt store is released again and its assets compared with the release's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from builders.release import ReleaseError
from builders.release.collect import COMPANION_ROLES
from builders.release.manifests import split
from builders.release.read import load_release

DIFFOSCOPE_TIMEOUT_S = 600


@dataclass
class NodeResult:
    key: str
    differing: list[str] = field(default_factory=list)  # output paths (or "manifest:<field>")
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differing


@dataclass
class CheckResult:
    check_out: Path
    cells: dict[str, list[str]]  # cell id -> node keys whose outputs ship for it
    nodes: dict[str, NodeResult]
    assets: dict[str, bool] = field(default_factory=dict)  # asset name -> same bytes after re-release
    reports: list[Path] = field(default_factory=list)

    def cell_identical(self, cell: str) -> bool:
        return all(self.nodes[k].identical for k in self.cells[cell])

    @property
    def identical(self) -> bool:
        return all(n.identical for n in self.nodes.values()) and all(self.assets.values())

    def lines(self) -> list[str]:
        out = []
        for cell in sorted(self.cells):
            ok = self.cell_identical(cell)
            out.append(f"{'bit-identical' if ok else 'DIFFERS':14s} {cell}")
        for key in sorted(self.nodes):
            n = self.nodes[key]
            for path in n.differing:
                out.append(f"  differs: {key}: {path}")
            for note in n.notes:
                out.append(f"  note: {key}: {note}")
        for name, same in sorted(self.assets.items()):
            if not same:
                out.append(f"  differs: release asset {name}")
        for r in self.reports:
            out.append(f"  diffoscope report: {r}")
        total = len(self.nodes)
        same = sum(n.identical for n in self.nodes.values())
        out.append(f"{same}/{total} nodes and {sum(self.assets.values())}/{len(self.assets)} assets bit-identical; "
                   f"rebuild in {self.check_out}")
        return out


def _fresh(check_out: Path | None) -> Path:
    if check_out is None:
        return Path(tempfile.mkdtemp(prefix="buildmatrix-check-"))
    if check_out.exists() and any(check_out.iterdir()):
        raise ReleaseError(f"--check-out {check_out}: not empty; the rebuild must start from nothing - "
                           "pass a new directory")
    check_out.mkdir(parents=True, exist_ok=True)
    return check_out


def _rebuild(rel: dict, manifests: dict[str, dict], matrix_path: Path, out: Path, executor: str, log) -> None:
    from builders import matrix as matrix_mod
    from builders.build import Builder
    from builders.plan import make_plan
    from builders.store import Store

    m = matrix_mod.load(matrix_path)
    index: list[dict] = []  # one build per model; their index entries together, for the re-release
    by_model: dict[str, list[dict]] = {}
    for c in rel["cells"]:
        by_model.setdefault(manifests[c["node"]]["model"]["name"], []).append(c)
    for name, cells in sorted(by_model.items()):
        model = manifests[cells[0]["node"]]["model"]
        parts = [c["id"].rsplit(".", 3) for c in cells]  # model, backend, quant, target
        sel = matrix_mod.select(m, model=name if name in m.models else model["source"],
                                backends_=",".join(sorted({p[1] for p in parts})),
                                quants=",".join(sorted({p[2] for p in parts})),
                                targets=",".join(sorted({p[3] for p in parts})),
                                only=",".join(c["id"] for c in cells))
        store = Store(out, cache_from=[])  # nothing imported: every node runs again
        plan = make_plan(m, sel, store, executor=executor)
        report = Builder(plan, store, m, executor=executor, log=log).run()
        failed = [c for c in report.cells if c.status not in ("built", "cached")]
        if failed:
            raise ReleaseError(f"rebuild of {failed[0].id} failed ({failed[0].reason}); nothing to compare")
        index += json.loads(report.index.read_text())["artifacts"]
    Store(out, cache_from=[]).write_index(sorted(index, key=lambda e: e["cell"]))


def _rebuilt_manifests(out: Path) -> dict[str, dict]:
    found = {}
    for p in sorted(out.glob(".store/*/manifest.json")):
        m = json.loads(p.read_text())
        found[m["node"]["key"]] = m
    return found


def _diff_fields(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff_fields(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)]
    return [] if a == b else [prefix or "(whole)"]


class _Originals:
    """The released bytes of a node's output file: from the original store when given, else the release."""

    def __init__(self, dest: Path, rel: dict, out: Path | None, scratch: Path):
        self.dest, self.out, self.scratch = dest, out, scratch
        self.assets = {a["node"]: a for a in rel["assets"]}

    def get(self, m: dict, path: str) -> Path | None:
        if self.out is not None:
            p = self.out / ".store" / m["node"]["digest"] / "out" / path
            if p.is_file():
                return p
        a = self.assets.get(m["node"]["key"])
        if a is None or a.get("parts"):
            return None
        if a["kind"] == "file":
            return self.dest / a["name"]
        target = self.scratch / m["node"]["key"] / path
        with tarfile.open(self.dest / a["name"]) as tar:
            member = tar.extractfile(f"{m['node']['key']}/{path}")
            if member is None:
                return None
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as f:
                shutil.copyfileobj(member, f)
        return target


def _diffoscope(a: Path, b: Path, report: Path) -> Path | None:
    exe = shutil.which("diffoscope")
    if not exe:
        return None
    report.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([exe, "--text", str(report), "--no-progress", str(a), str(b)], capture_output=True,
                       timeout=DIFFOSCOPE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        report.write_text(f"diffoscope did not finish within {DIFFOSCOPE_TIMEOUT_S} s\n")
    return report


def compare(dest: Path, rel: dict, manifests: dict[str, dict], rebuilt_out: Path, original_out: Path | None
            ) -> CheckResult:
    rebuilt = _rebuilt_manifests(rebuilt_out)
    originals = _Originals(dest, rel, original_out, rebuilt_out / ".check" / "original")
    cells = {}
    for c in rel["cells"]:
        m = manifests[c["node"]]
        cells[c["id"]] = [c["node"]] + [p["key"] for r, p in sorted((m.get("parents") or {}).items())
                                        if r in COMPANION_ROLES]
    result = CheckResult(rebuilt_out, cells, {})
    for key, m in sorted(manifests.items()):
        nr = result.nodes[key] = NodeResult(key)
        new = rebuilt.get(key)
        if new is None:
            nr.differing.append("(node not rebuilt)")
            continue
        if new["node"]["digest"] != m["node"]["digest"]:
            nr.notes.append(f"inputs digest {new['node']['digest'][:12]} != released {m['node']['digest'][:12]}: "
                            "code, images or options changed since the release")
        old_out = {o["path"]: o["sha256"] for o in m.get("outputs") or []}
        new_out = {o["path"]: o["sha256"] for o in new.get("outputs") or []}
        for path in sorted(set(old_out) | set(new_out)):
            if old_out.get(path) == new_out.get(path):
                continue
            nr.differing.append(path if path in old_out and path in new_out else
                                f"{path} ({'only in the release' if path in old_out else 'only in the rebuild'})")
            if path in old_out and path in new_out:
                a = originals.get(m, path)
                b = rebuilt_out / ".store" / new["node"]["digest"] / "out" / path
                if a is not None:
                    r = _diffoscope(a, b, rebuilt_out / ".check" / "diffoscope" / f"{key}--{path.replace('/', '_')}.txt")
                    if r:
                        result.reports.append(r)
        new_repro, _ = split(new)
        fields = [f for f in _diff_fields(m, new_repro) if not f.startswith("outputs")]
        nr.differing.extend(f"manifest:{f}" for f in fields)
    return result


def recheck(dest: Path, matrix_path: Path, check_out: Path | None, executor: str = "docker", log=print,
            original_out: Path | None = None) -> CheckResult:
    from builders.release.assemble import build_release

    rel, manifests = load_release(dest)
    out = _fresh(check_out)
    _rebuild(rel, manifests, matrix_path, out, executor, log)
    result = compare(dest, rel, manifests, out, original_out)
    again = build_release(out, out / ".check" / "release", [c["id"] for c in rel["cells"]], matrix_path,
                          _limit_of(rel))
    new_assets = {a["name"]: a["sha256"] for a in again.assets}
    result.assets = {a["name"]: new_assets.get(a["name"]) == a["sha256"] for a in rel["assets"]}
    if check_out is None and result.identical:  # a temporary rebuild with nothing to look at
        shutil.rmtree(out, ignore_errors=True)
        result.check_out = Path(f"{out} (removed: nothing differed)")
    return result


def _limit_of(rel: dict) -> int:
    from builders.release.parts import GITHUB_ASSET_LIMIT

    return int(rel.get("max_asset_bytes") or GITHUB_ASSET_LIMIT)
