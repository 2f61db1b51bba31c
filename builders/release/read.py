"""Read a release directory back: release.json and the reproducible manifests, by node key."""

from __future__ import annotations

import json
from pathlib import Path

from builders.release import ReleaseError

RELEASE_JSON = "release.json"
MANIFESTS = "manifests"


def load_release(dest: Path) -> tuple[dict, dict[str, dict]]:
    path = Path(dest) / RELEASE_JSON
    if not path.is_file():
        raise ReleaseError(f"{dest}: no {RELEASE_JSON}; make the release first with `invoke release --dest {dest}`")
    try:
        rel = json.loads(path.read_text())
        manifests = {}
        for p in sorted((Path(dest) / MANIFESTS).glob("*.json")):
            m = json.loads(p.read_text())
            manifests[m["node"]["key"]] = m
    except (OSError, ValueError, KeyError) as e:
        raise ReleaseError(f"{dest}: unreadable release ({e}); make it again with `invoke release`") from None
    if rel.get("schema") != 1:
        raise ReleaseError(f"{path}: not a schema 1 release; make it again with `invoke release`")
    for c in rel["cells"]:
        if c["node"] not in manifests:
            raise ReleaseError(f"{Path(dest) / MANIFESTS}: no manifest for {c['node']} (cell {c['id']}); "
                               "the release is incomplete - make it again")
    for a in rel["assets"]:
        if a["node"] not in manifests:
            raise ReleaseError(f"{Path(dest) / MANIFESTS}: no manifest for {a['node']} (asset {a['name']}); "
                               "the release is incomplete - make it again")
    return rel, manifests
