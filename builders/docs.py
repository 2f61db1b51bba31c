"""The README's support matrix, generated from the backends', targets' and architectures' (builders/archs.py)
tables (`invoke docs`)."""

from __future__ import annotations

import re
from pathlib import Path

from builders import archs, backends
from builders.targets import TARGETS

START, END = "<!-- support-matrix:start -->", "<!-- support-matrix:end -->"


def _cell(backend, target: str) -> str:
    """"yes" (with the backend's note on how that target's artifact is built/checked, if it has one) or "—"."""
    if target not in backend.targets:
        return "—"
    note = getattr(backend, "target_notes", {}).get(target)
    return f"yes: {note}" if note else "yes"


def support_matrix() -> str:
    names = backends.USER_BACKENDS
    rows = ["| target | " + " | ".join(names) + " | notes |", "|---|" + "---|" * (len(names) + 1)]
    for t in TARGETS.values():
        cells = [_cell(backends.get(b), t.name) for b in names]
        notes = ", ".join(n for n, on in (("needs macOS for some steps", t.needs_macos),
                                          ("runs on a GPU", t.needs_gpu),
                                          ("verified on the build host", t.runs_on_build_host)) if on)
        rows.append(f"| `{t.name}` ({t.description}) | " + " | ".join(cells) + f" | {notes} |")
    rows += ["", "| backend | quant codes | architectures |", "|---|---|---|"]
    for b in names:
        be = backends.get(b)
        rows.append(f"| {b} | {' '.join(f'`{q}`' for q in be.quants)} | {', '.join(be.archs)} |")
    rows += ["", "| architecture | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for f in archs.FAMILIES.values():
        def cell(b: str) -> str:
            if f.reason(b) is not None:
                return f"no: {f.reason(b)}"
            dropped = ", ".join(d.replace("_", " ") for d in f.drops.get(b, ()))
            return f"yes (no {dropped})" if dropped else "yes"

        cells = [cell(b) for b in names]
        rows.append(f"| {f.hf_arch} (`tiny:{f.name}`) | " + " | ".join(cells) + " |")
    rows += ["", "| backend | option | default | valid values | what it does |", "|---|---|---|---|---|"]
    for b in names:
        rows += backends.get(b).options.table()
    return "\n".join(rows)


def update_readme(path: Path) -> bool:
    """Rewrite the block between the markers; return True if the file changed."""
    text = path.read_text()
    new = re.sub(re.escape(START) + ".*?" + re.escape(END), f"{START}\n{support_matrix()}\n{END}", text, flags=re.S)
    if new != text:
        path.write_text(new)
    return new != text
