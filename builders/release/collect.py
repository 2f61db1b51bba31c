"""Which cells and nodes a release holds: the verified cells of a store's index.json, and their nodes.

A cell ships the outputs of its artifact node plus the parents a runtime needs next to it
(COMPANION_ROLES); every ancestor node (model, reference, intermediate conversions) is listed in the
release's manifests and provenance. Anything not verified, missing or unreadable is refused.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from builders.release import ReleaseError

# parent role -> why a cell's artifact needs that parent's outputs at run time (so they ship with it)
COMPANION_ROLES = {"weights": "an MLC model library runs with the weights it was built for"}


@dataclass
class ReleaseCell:
    id: str
    node: str  # artifact node key
    digest: str
    ships: list[str]  # digests of the nodes whose outputs ship: the artifact node, then its companions
    verification: dict
    deferred: list


@dataclass
class Collected:
    out: Path
    cells: list[ReleaseCell]
    manifests: dict[str, dict] = field(default_factory=dict)  # digest -> manifest of every node involved

    def manifest(self, digest: str) -> dict:
        return self.manifests[digest]


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReleaseError(f"{path}: {what} is missing; rebuild with `invoke build`") from None
    except (OSError, ValueError) as e:
        raise ReleaseError(f"{path}: {what} is unreadable ({e}); rebuild with `invoke build`") from None


def read_index(out: Path) -> list[dict]:
    path = out / "index.json"
    if not path.is_file():
        raise ReleaseError(f"{path}: no build index; run `invoke build --out {out}` first")
    index = _read_json(path, "the build index")
    entries = index.get("artifacts")
    if index.get("schema") != 1 or not isinstance(entries, list):
        raise ReleaseError(f"{path}: not a schema 1 build index; rebuild with `invoke build --out {out}`")
    return entries


def _select(entries: list[dict], only: list[str], index_path: Path) -> list[dict]:
    if not entries:
        raise ReleaseError(f"{index_path}: the last build has no built cell; nothing to release")
    if not only:
        return entries
    chosen = [e for e in entries if any(fnmatch.fnmatchcase(e["cell"], p) for p in only)]
    for p in only:
        if not any(fnmatch.fnmatchcase(e["cell"], p) for e in entries):
            listed = ", ".join(e["cell"] for e in entries)
            raise ReleaseError(f"--only {p}: matches no built cell in {index_path} (failed cells are not listed "
                               f"there; rebuild them first); built cells: {listed}")
    return chosen


def _check_verified(entry: dict, manifest: dict) -> None:
    cell = entry["cell"]
    status = entry.get("status", "built")
    if status == "earlier":
        raise ReleaseError(f"cell {cell} is an earlier build's entry ({entry.get('kept_because')}): rebuild it, "
                           "or leave it out with --only")
    if status not in ("built", "cached"):
        raise ReleaseError(f"cell {cell} is {status}: fix and rebuild it, or leave it out with --only")
    ver = manifest.get("verification") or {}
    if ver.get("passed") is not True:
        why = "; ".join(ver.get("failures") or []) or ver.get("note") or f"verification.passed={ver.get('passed')}"
        raise ReleaseError(f"cell {cell} is not verified ({why}): rebuild it so it passes its checks, "
                           "or leave it out with --only")


def collect(out: Path, only: list[str] | None = None) -> Collected:
    out = Path(out)
    entries = _select(read_index(out), only or [], out / "index.json")
    got = Collected(out, [])

    def load(digest: str, needed_by: str) -> dict:
        if digest not in got.manifests:
            m = _read_json(out / ".store" / digest / "manifest.json", f"the manifest of {needed_by}")
            if m.get("node", {}).get("digest") != digest:
                raise ReleaseError(f"{out / '.store' / digest / 'manifest.json'}: names digest "
                                   f"{m.get('node', {}).get('digest')}, not its directory's; the store is corrupt")
            got.manifests[digest] = m
            model_digest = (m.get("model") or {}).get("digest")
            if model_digest and model_digest != digest and (out / ".store" / model_digest / "manifest.json").is_file():
                load(model_digest, f"the node that generated model {m['model'].get('name')}")  # tiny models
            for role, parent in sorted((m.get("parents") or {}).items()):
                load(parent["digest"], f"{m['node']['key']}'s {role} parent")
        return got.manifests[digest]

    for entry in sorted(entries, key=lambda e: e["cell"]):
        m = load(entry["digest"], f"cell {entry['cell']}")
        _check_verified(entry, m)
        ships = [entry["digest"]]
        for role in sorted(COMPANION_ROLES):
            parent = (m.get("parents") or {}).get(role)
            if parent:
                pm = load(parent["digest"], f"{entry['node']}'s {role}")
                if (pm.get("verification") or {}).get("passed") is False:
                    raise ReleaseError(f"cell {entry['cell']}: its {role} node {pm['node']['key']} failed verification; "
                                       "rebuild it")
                ships.append(parent["digest"])
        got.cells.append(ReleaseCell(entry["cell"], entry["node"], entry["digest"], ships, m["verification"],
                                     m.get("deferred") or []))
    return got


def ancestry(got: Collected) -> list[str]:
    """Every node digest the release's cells depend on (artifact nodes included), sorted by node key."""
    return sorted(got.manifests, key=lambda d: (got.manifests[d]["node"]["key"], d))
