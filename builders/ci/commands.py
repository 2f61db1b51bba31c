"""Entry points of the CI invoke tasks (`invoke ci`, `ci-plan`, `ci-images`, `ci-stage`, `ci-finish`).
User mistakes surface as one line and exit 2 (builders.cli.guarded); a failed build exits 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from builders.cli import _plan, console, guarded, writing
from builders.errors import BuildmatrixError


def _filters(matrix, model, backends, quants, targets, only) -> dict:
    return {"matrix": matrix, "model": model, "backends": backends, "quants": quants, "targets": targets,
            "only": only}


def _layout(filters: dict, out: str, cache_from: str | None = None):
    from builders.ci import layout

    m, store, p = _plan(filters["matrix"], out, filters["model"], filters["backends"], filters["quants"],
                        filters["targets"], filters["only"], "docker", cache_from=cache_from)
    return m, store, p, layout.from_plan(p)


@guarded
def generate(path: str, out: str, push_images: bool = False, **selection) -> None:
    from builders.ci import workflow

    filters = _filters(**selection)
    workflow.cli_args(filters)  # refuses values GitHub would expand, before any work
    m, _, _, lay = _layout(filters, out)
    if not lay.groups:
        raise BuildmatrixError("ci: no cell of this selection can be built (all unsupported/unavailable); "
                               "run `invoke plan` to see why")
    text = workflow.render(lay, filters, m.images, push_images)
    writing(f"writing {path}")
    if Path(path).is_dir():
        raise BuildmatrixError(f"--path {path}: is a directory; pass the workflow file to write")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    built = sum(len(g.cells) for g in lay.groups.values())
    n_build = sum(g.stage == "build" for g in lay.groups.values())
    console.print(f"wrote {path}: {built} cells in {n_build} build groups ({len(lay.groups) - n_build} model "
                  "groups before them), jobs "
                  + ", ".join(f"{j} ({len(g)})" for j, g in lay.jobs.items())
                  + (f"; {len(lay.skipped)} cells get no runner" if lay.skipped else ""))


@guarded
def plan(out: str, expect: str | None, github_output: str | None, **selection) -> None:
    """Print the job matrices as JSON; with --github-output append them as step outputs."""
    _, _, _, lay = _layout(_filters(**selection), out)
    if expect and expect != lay.fingerprint:
        raise BuildmatrixError(f"ci-plan: this plan's layout is {lay.fingerprint} but the workflow was generated "
                               f"for {expect}; regenerate it with `invoke ci` and commit the result")
    outputs = lay.outputs()
    # GitHub annotations: what gets no runner is visible; an unavailable cell (asked for, cannot be built
    # with these toolchains) is a warning, unsupported ones (a backend without that target) one notice
    for s in lay.skipped:
        if s["status"] != "unsupported":
            print(f"::warning title=no runner for {s['id']}::{s['status']}: {s['reason']}", file=sys.stderr)
    unsupported = [s["id"] for s in lay.skipped if s["status"] == "unsupported"]
    if unsupported:
        print(f"::notice title=unsupported cells::{len(unsupported)} cells name a target their backend does not "
              f"build (e.g. {unsupported[0]}); `invoke plan` lists them", file=sys.stderr)
    if github_output:
        with open(github_output, "a") as f:
            for k, v in outputs.items():
                f.write(f"{k}={v}\n")
    print(json.dumps({k: json.loads(v) if k != "fingerprint" else v for k, v in outputs.items()}, indent=1))


@guarded
def images(matrix: str, names: str, directory: str, registry: str | None, push: bool) -> None:
    from builders import matrix as matrix_mod
    from builders.ci import images as ci_images

    m = matrix_mod.load(Path(matrix))
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    for n in wanted:
        if n not in m.images:
            raise BuildmatrixError(f"--names: unknown image '{n}'; {matrix} defines {', '.join(sorted(m.images))}")
    how = ci_images.ensure(wanted, m.images, Path(directory), registry, push, log=console.print)
    for n, h in how.items():
        console.print(f"{n:8s} {h}")


@guarded
def stage(group: str, out: str, cache_from: str | None, export: str | None, **selection) -> None:
    from builders.ci import stage as stage_mod

    m, store, p, _ = _layout(_filters(**selection), out, cache_from)
    report, lay = stage_mod.run(m, store, p, group, log=console.print)
    for c in report.cells:
        console.print(f"{c.status:11s} {c.id}" + (f": {c.reason}" if c.reason else ""))
    if report.exit_code == 0 and export and group != stage_mod.RELEASE:
        keys = stage_mod.export(store, p, lay.group(group), Path(export))
        console.print(f"exported {len(keys)} nodes to {export}")
    sys.exit(report.exit_code)


@guarded
def finish(group: str, out: str, cache_from: str | None, **selection) -> None:
    from builders.ci import finish as finish_mod

    _, store, p, lay = _layout(_filters(**selection), out, cache_from)
    cells = lay.group(group).macos_cells
    if not cells:
        raise BuildmatrixError(f"--group {group}: no cell of it needs a macOS step")
    sys.exit(finish_mod.run(store, p, cells, Path(out), log=console.print))
