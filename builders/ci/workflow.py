"""Render the GitHub Actions workflow (ci/github-actions.yml.j2) from a CI layout.

Only the shape is written into the YAML (which jobs exist, the image tars they load); the job matrices
come from the plan job at run time (`fromJSON`), computed by the same code from the same plan, and the
plan job refuses to go on when its layout's fingerprint differs from the one written here.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import jinja2

from builders.ci import images as ci_images
from builders.ci.actions import uses
from builders.ci.layout import Layout
from builders.errors import MatrixError

TEMPLATE = Path(__file__).resolve().parents[2] / "ci" / "github-actions.yml.j2"
FILTERS = ("matrix", "model", "backends", "quants", "targets", "only")
TIMEOUT = {"models": 90, "build": 240, "finish": 120}  # minutes per job


def cli_args(filters: dict[str, str | None]) -> str:
    """The selection every job repeats: `--matrix M --backends ...`, shell-quoted."""
    parts = []
    for k in FILTERS:
        v = filters.get(k)
        if not v:
            continue
        if "${{" in str(v) or "\n" in str(v):
            raise MatrixError(f"--{k} {v!r}: a GitHub expression or newline cannot be a filter value")
        parts.append(f"--{k} {shlex.quote(str(v))}")
    return " ".join(parts)


def _image_set(names: list[str], pins: dict) -> dict:
    return {"names": ",".join(names), "tar": ci_images.tar_path(Path("."), names, pins).name}


def render(lay: Layout, filters: dict[str, str | None], pins: dict, push_images: bool = False) -> str:
    args = cli_args(filters)
    jobs: dict[str, dict] = {}
    sets: dict[str, dict] = {}
    for job, gids in lay.jobs.items():
        groups = [lay.groups[g] for g in gids]
        stage = "finish" if job.startswith("finish") else groups[0].stage
        names = sorted({i for g in groups for i in g.images})
        hub = any(m in lay.hub_models for g in groups for m in g.models)
        if stage == "finish":
            needs = ["plan"] + [j for j in lay.jobs if j.startswith("build")]
        else:
            needs = ["plan", "images"] + ([j for j in lay.jobs if j.startswith("models")] if stage == "build" else [])
            sets[",".join(names)] = _image_set(names, pins)
        jobs[job] = {"macos": stage == "finish", "stage": stage, "needs": needs, "timeout": TIMEOUT[stage],
                     "hub": hub, "names": ",".join(names), "tar": sets.get(",".join(names), {}).get("tar")}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             variable_start_string="[[", variable_end_string="]]",
                             block_start_string="[%", block_end_string="%]", autoescape=False)
    summary = ", ".join(f"{job}: {len(g)}" for job, g in lay.jobs.items())
    if lay.skipped:
        summary += f"; {len(lay.skipped)} cells get no runner (unsupported/unavailable)"
    return env.from_string(TEMPLATE.read_text()).render(
        args=args, matrix_q=shlex.quote(filters.get("matrix") or "matrix.yaml"), fingerprint=lay.fingerprint,
        summary=summary, jobs=jobs, image_sets=[sets[k] for k in sorted(sets)], push_images=push_images,
        hub_plan=bool(lay.hub_models), any_macos=any(j["macos"] for j in jobs.values()), uses=uses)
