"""Generate the GitHub Actions workflow from the same matrix and filters as a local build.

Cells whose target needs macOS (ane, iphone, metal, metal_x86_64) get a job on a macOS runner using
the native executor; all others run in the toolchain containers on Linux runners.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import jinja2

from builders.targets import TARGETS

TEMPLATE = Path(__file__).resolve().parents[1] / "ci" / "github-actions.yml.j2"


def render(matrix_path: str, cell_ids: list[str], filters: dict[str, str | None]) -> str:
    args = " ".join(f"--{k} {shlex.quote(v)}" for k, v in filters.items() if v)
    macos = [c for c in cell_ids if TARGETS[c.rsplit(".", 1)[1]].needs_macos]
    linux = [c for c in cell_ids if c not in macos]
    needs = [j for j, cells in (("linux", linux), ("macos", macos)) if cells]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(TEMPLATE.read_text()).render(
        args=args, matrix=matrix_path, linux_cells=linux, macos_cells=macos, needs=needs)
