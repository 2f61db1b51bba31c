"""buildmatrix tasks. `invoke --list` shows them; `invoke --help build` documents every option.

Tasks only parse options and call into builders/ (builders/cli.py)."""

from invoke import task

from builders import cli

MATRIX = "matrix.yaml"
OUT = "dist"

SELECT_HELP = {
    "model": ("model: a name from matrix.yaml, tiny:ARCH, synthetic:CONFIG[@layers=N], ORG/NAME hub id, "
              "or a local directory"),
    "backends": "comma-separated backends (gguf, mlc, coreml); default: matrix.yaml defaults",
    "quants": "comma-separated quant codes (each backend takes the ones it knows)",
    "targets": "comma-separated targets (cpu, cuda, android, iphone, metal, webgpu, ane, ...)",
    "only": "comma-separated cell id globs, e.g. 'tiny-llama.gguf.*.cpu'",
    "matrix": "matrix file (default matrix.yaml)",
    "out": "output root (default dist/)",
    "executor": "docker (default: pinned toolchain containers) or native (this host's tools)",
}


@task(help={**SELECT_HELP,
            "only_step": "run only this step (name or 1-based number) of the selected cells' artifact nodes",
            "restart_step": "rerun the artifact nodes from this step (name or number) on",
            "hf_token": "Hugging Face token for gated models (default: $HF_TOKEN; never written anywhere)",
            "offline": "use only the local Hugging Face cache",
            "cache_from": "comma-separated other output roots to import already-built nodes from, by digest "
                          "(default: $BUILDMATRIX_CACHE_FROM)",
            "echo": "stream node logs to the terminal"})
def build(c, model=None, backends=None, quants=None, targets=None, only=None, matrix=MATRIX, out=OUT,
          executor="docker", only_step=None, restart_step=None, hf_token=None, offline=False, cache_from=None,
          echo=False):
    """Build every selected cell (default: the embedded tiny model) and print a summary table."""
    cli.build(matrix, out, model, backends, quants, targets, only, executor, only_step, restart_step,
              hf_token=hf_token, offline=offline, cache_from=cache_from, echo=echo)


@task(help={**SELECT_HELP, "json": "print the plan as JSON (cell ids, nodes, digests, cache state)"})
def plan(c, model=None, backends=None, quants=None, targets=None, only=None, matrix=MATRIX, out=OUT,
         executor="docker", json=False):
    """Show the expanded build graph without building anything."""
    cli.plan(matrix, out, model, backends, quants, targets, only, executor, json)


@task(help={"names": "comma-separated image names (default: all in matrix.yaml)", "matrix": SELECT_HELP["matrix"]})
def images(c, names=None, matrix=MATRIX):
    """Build or refresh the toolchain images (no work when nothing changed)."""
    cli.ensure_images(matrix, names)


@task(help={"k": "pytest -k expression", "fast": "only the tests that need no Docker engine",
            "toolchains": "only the tests of the per-target toolchain images (gguf-vulkan/windows/arm64, webgpu; "
                          "their images take 20-40 min each to build on 2 cores, so the default run leaves them out)"})
def test(c, k=None, fast=False, toolchains=False):
    """Run the test suite (real Docker engine, real converters)."""
    args = ["python", "-m", "pytest", "-q", "tests"]
    if k:
        args += ["-k", repr(k)]
    if fast:
        args += ["-m", "'not docker and not toolchains'"]
    elif toolchains:
        args += ["-m", "toolchains"]
    c.run(" ".join(args), pty=False)


@task(help={"out": "scratch output root for the benchmark (default dist-bench/)",
            "runs": "repetitions for the warm no-op timing (default bench only)",
            "model": "per-node figures of this model's build instead (e.g. synthetic:qwen2.5-0.5b)",
            "backends": SELECT_HELP["backends"], "quants": SELECT_HELP["quants"], "targets": SELECT_HELP["targets"],
            "direct": "with --model: also time each conversion step's upstream tool called directly (default on)",
            "repeat": "with --model: rounds of (rebuild the conversion nodes, one direct run each); the upstream "
                      "ratio is median / median (default 3)",
            "keep": "with --model: keep the bench's store and artifacts (default on; --no-keep removes them, "
                    "keeping bench-nodes.json)"})
def bench(c, out="dist-bench", runs=5, model=None, backends=None, quants=None, targets=None, direct=True, repeat=3,
          keep=True):
    """Speed and memory figures: cold build, warm no-op, overhead vs llama.cpp's converter, peak memory;
    with --model: wall, phases, peak RSS and upstream ratio per node of that model's build."""
    if model:
        from builders import bench_nodes

        bench_nodes.main(out, model, backends, quants, targets, direct, int(repeat), keep)
        return
    from builders import bench as bench_mod

    bench_mod.main(out, int(runs))


CI_SELECT_HELP = {k: v for k, v in SELECT_HELP.items() if k not in ("executor", "out")}
CI_HELP = {**CI_SELECT_HELP, "out": "output root on the runner (default dist/)"}


@task(help={**CI_SELECT_HELP, "path": "where to write the workflow (default .github/workflows/buildmatrix.yml)",
            "push_images": "let the images job push built toolchain images to GHCR (gives it packages: write)"})
def ci(c, model=None, backends=None, quants=None, targets=None, only=None, matrix=MATRIX,
       path=".github/workflows/buildmatrix.yml", push_images=False):
    """Generate the GitHub Actions workflow: plan job, models/build jobs per group, macOS finish, release."""
    from builders.ci import commands

    commands.generate(path, OUT, push_images, matrix=matrix, model=model, backends=backends, quants=quants,
                      targets=targets, only=only)


@task(help={**CI_HELP, "expect": "layout fingerprint the workflow was generated for (fail when it differs)",
            "github_output": "append the job matrices to this file ($GITHUB_OUTPUT)"})
def ci_plan(c, model=None, backends=None, quants=None, targets=None, only=None, matrix=MATRIX, out=OUT,
            expect=None, github_output=None):
    """Print the CI job matrices (JSON) computed from the plan; used by the workflow's plan job."""
    from builders.ci import commands

    commands.plan(out, expect, github_output, matrix=matrix, model=model, backends=backends, quants=quants,
                  targets=targets, only=only)


@task(help={"names": "comma-separated image names", "matrix": SELECT_HELP["matrix"],
            "dir": "where image tars are kept (restored/saved by actions/cache)",
            "registry": "registry prefix to pull from, e.g. ghcr.io/OWNER (images named buildmatrix-NAME:TAG)",
            "push": "push the images built here to the registry"})
def ci_images(c, names, matrix=MATRIX, dir="ci-images", registry=None, push=False):
    """Make toolchain images present: load the saved tar, else pull, else build; save the tar."""
    from builders.ci import commands

    commands.images(matrix, names, dir, registry, push)


@task(help={**CI_HELP, "group": "CI group id (from `invoke ci-plan`), or `release`",
            "cache_from": "comma-separated handed-off output roots to import nodes from",
            "export": "copy the group's own promoted nodes to this output root"})
def ci_stage(c, group, model=None, backends=None, quants=None, targets=None, only=None, matrix=MATRIX, out=OUT,
             cache_from=None, export=None):
    """Build one CI group's nodes in containers (or, for `release`, publish what was handed off)."""
    from builders.ci import commands

    commands.stage(group, out, cache_from, export, matrix=matrix, model=model, backends=backends, quants=quants,
                   targets=targets, only=only)


@task(help={**CI_HELP, "group": "CI group id whose macOS cells to finish",
            "cache_from": "comma-separated handed-off output roots (the Linux jobs' nodes)"})
def ci_finish(c, group, model=None, backends=None, quants=None, targets=None, only=None, matrix=MATRIX, out=OUT,
              cache_from=None):
    """On macOS: run exactly the steps the Linux manifests list as deferred (.mlmodelc, .dylib link)."""
    from builders.ci import commands

    commands.finish(group, out, cache_from, matrix=matrix, model=model, backends=backends, quants=quants,
                    targets=targets, only=only)


@task
def docs(c):
    """Regenerate the README's support matrix from the backend and target tables."""
    from pathlib import Path

    from builders.docs import update_readme

    print("README.md updated" if update_readme(Path("README.md")) else "README.md already up to date")


@task(help={"out": "the store to release from (default dist/)",
            "dest": "release directory to write (default release/); replaced atomically",
            "only": "comma-separated cell id globs (default: every cell of the last build in <out>/index.json)",
            "matrix": "the matrix the store was built from, recorded in the provenance (default matrix.yaml)",
            "max_asset_bytes": "split larger assets into numbered parts (default 2147483647: GitHub's 2 GiB limit)",
            "check": "rebuild every cell of the release at --dest from nothing and compare byte for byte",
            "check_out": "with --check: the fresh output root for the rebuild (default: a new temporary dir)",
            "executor": "with --check: docker (default) or native"})
def release(c, out=OUT, dest="release", only=None, matrix=MATRIX, max_asset_bytes=None, check=False, check_out=None,
            executor="docker"):
    """Collect the verified cells of a store into a release: assets, SHA256SUMS, provenance, manifests."""
    from builders.release import commands

    commands.release(out, dest, only, matrix, max_asset_bytes, check, check_out, executor)


@task(help={"repo": "Hub repository ORG/NAME (created if missing)",
            "release": "the release directory made by `invoke release` (default release/)",
            "dry_run": "write the exact commit (files/, operations.json, card-metadata.json) to this new directory "
                       "and make no network call",
            "token": "Hugging Face token (default: $HF_TOKEN; never written anywhere); needed unless --dry-run",
            "quantized_by": "the model card's quantized_by (default buildmatrix)",
            "collection": "also add the repository to this collection (its slug)",
            "private": "create the repository as private"})
def publish(c, repo=None, release="release", dry_run=None, token=None, quantized_by="buildmatrix", collection=None,
            private=False):
    """Publish a release to the Hugging Face Hub with a model card generated from its manifests."""
    from builders.publish import commands

    commands.publish(repo, release, dry_run, token, quantized_by, collection, private)
