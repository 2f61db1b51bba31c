"""What a Linux CI job runs for its group: build exactly the group's nodes (parents come from the
handed-off stores given as --cache-from), then export the group's own nodes for the jobs after it.

The release job runs the `release` stage: every node must already be in the handed-off stores (nothing
is built there); the builder then only publishes the dist/ tree and index.json.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from builders.backends.base import Cell
from builders.ci import layout as layout_mod
from builders.errors import BuildmatrixError
from builders.plan import PlanCell

RELEASE = "release"


def _stage1_cells(p, group) -> list[PlanCell]:
    """Stand-in cells, one per stage-1 node (the model, its reference): the builder builds exactly those
    and their ancestors, nothing of any backend."""
    return [PlanCell(Cell(group.models[0], "model", p.nodes[d].key.rsplit(".", 1)[-1], "any"), [d])
            for d in group.nodes]


def select_cells(p, lay, gid: str) -> list[PlanCell]:
    if gid == RELEASE:
        wanted = {c for g in lay.groups.values() for c in g.cells}
        cells = [pc for pc in p.cells if pc.cell.id in wanted]
        # in this root, or importable (integrity-checked on import) from a handed-off store
        missing = sorted(p.nodes[d].key for pc in cells for d in pc.nodes
                         if not p.nodes[d].cached and p.nodes[d].lookup.status != "import")
        if missing:
            raise BuildmatrixError(f"release: node {missing[0]} (and {len(missing) - 1} more) is not in the "
                                   "handed-off stores; the release builds nothing - rerun the failed jobs")
        return cells
    group = lay.group(gid)
    if group.stage == "models":
        return _stage1_cells(p, group)
    return [pc for pc in p.cells if pc.cell.id in set(group.cells)]


def export(store, p, group, dest: Path) -> list[str]:
    """Copy (hardlink) the group's own promoted nodes to <dest>/.store/<digest>; returns their keys.
    A node that is not promoted is an error: the next jobs would miss it."""
    exported = []
    for digest in group.nodes:
        key = p.nodes[digest].key
        src = store.node_dir(digest)
        if not (src / "manifest.json").is_file():
            raise BuildmatrixError(f"export: node {key} ({digest[:12]}) is not in {store.root}; it did not build")
        target = dest / ".store" / digest
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, target, copy_function=_link_or_copy)
        exported.append(key)
    return exported


def _link_or_copy(src: str, dst: str) -> None:
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run(m, store, p, gid: str, executor: str = "docker", log=print):
    """Build the group's cells (or stage-1 nodes); returns the BuildReport."""
    from builders.build import Builder

    lay = layout_mod.from_plan(p)
    cells = select_cells(p, lay, gid)
    if not cells:
        raise BuildmatrixError(f"--group {gid}: no cell to build in this plan")
    return Builder(replace(p, cells=cells), store, m, executor=executor, log=log).run(), lay
