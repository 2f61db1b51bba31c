"""The generated workflow, run locally (tests/workflow_sim.py): its jobs in dependency order, each in a fresh
clone of HEAD, handing on only the plan outputs, artifacts and caches the workflow hands on, end with the
same release directory as one local `invoke build` + `invoke release` in another fresh clone.

Kept cheap: the default matrix (tiny-llama) with the gguf backend. The models job's cache entry is what an
earlier run of that job left (its nodes imported from the session's seed store), so the models job builds
nothing and the build jobs build the three GGUF cells for real."""

import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT
from workflow_sim import Simulation

SELECT = ("--backends", "gguf")
WORKFLOW = ".github/workflows/buildmatrix.yml"
RUN_RECORD = "run-record.json"  # timings, image ids, hosts: differs between any two builds by design


def _env() -> dict:
    from builders.store import CACHE_FROM_ENV

    drop = {CACHE_FROM_ENV, "HF_TOKEN"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("GITHUB_")}
    return {**env, "COLUMNS": "200"}


def _clone(dest, commit):
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", "--detach", commit], check=True)
    return dest


def _invoke(cwd, *args):
    proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=3000)
    assert proc.returncode == 0, f"invoke {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _release_files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.docker
@pytest.mark.fresh_store  # the jobs must not see the seed store: only what the workflow hands on
def test_workflow_jobs_in_fresh_clones_end_with_the_local_release(tmp_path, seed_store):
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    gen = _clone(tmp_path / "gen", commit)
    _invoke(gen, "ci", "--path", WORKFLOW, *SELECT)
    plan = json.loads(_invoke(gen, "ci-plan", "--out", str(tmp_path / "plan-out"), *SELECT).stdout)
    [models] = plan["models_1"]["include"]

    sim = Simulation(ROOT, commit, tmp_path / "sim", _env())
    # an earlier run of the models job left its actions/cache entry (the seed store's nodes, imported by digest)
    _invoke(gen, "ci-stage", "--group", models["group"], "--out", str(tmp_path / "earlier"), "--cache-from",
            str(seed_store), "--export", str(sim.caches / f"store-{models['group']}-{models['key']}"), *SELECT)
    sim.run(gen / WORKFLOW, log=print)

    assert sim.ran == [("plan", ""), ("models_1", "tiny-llama.model"), ("build_gguf_1", "tiny-llama.gguf.F16+Q4_K_M"),
                       ("build_gguf_1", "tiny-llama.gguf.Q8_0"), ("release", "")]
    logs = {p.name: p.read_text() for p in (sim.work / "logs").iterdir()}
    built = [line.split()[1] for text in logs.values() for line in text.splitlines() if line.startswith("run ")]
    # each node built once, by the job that owns it; the model and reference came from the cache/artifact
    assert sorted(built) == ["tiny-llama.gguf.F16", "tiny-llama.gguf.Q4_K_M", "tiny-llama.gguf.Q8_0"], built
    assert sorted(sim.artifacts.iterdir()) == sorted(sim.artifacts / f"store-{g}" for g in (
        "tiny-llama.model", "tiny-llama.gguf.F16+Q4_K_M", "tiny-llama.gguf.Q8_0"))
    ci_release = sim.clones[("release", 0)] / "release"

    local = _clone(tmp_path / "local", commit)
    _invoke(local, "build", "--out", "dist", "--cache-from", str(seed_store), *SELECT)
    _invoke(local, "release", "--out", "dist", "--dest", "release")
    local_release = local / "release"

    ci_files, local_files = _release_files(ci_release), _release_files(local_release)
    assert set(ci_files) == set(local_files)
    ggufs = sorted(n for n in ci_files if n.endswith(".gguf"))
    assert [n.rsplit("-", 1)[-1] for n in ggufs] == ["F16.gguf", "Q4_K_M.gguf", "Q8_0.gguf"], ggufs
    differ = sorted(n for n in ci_files if ci_files[n] != local_files[n])
    assert set(differ) <= {RUN_RECORD, "SHA256SUMS"}, differ
    sums = [ln for ln in ci_files["SHA256SUMS"].decode().splitlines() if not ln.endswith(f"  {RUN_RECORD}")]
    assert sums == [ln for ln in local_files["SHA256SUMS"].decode().splitlines() if not ln.endswith(f"  {RUN_RECORD}")]
    for d in (ci_release, local_release):
        subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=d, check=True)
    assert {f"release/{n}" for n in ggufs} | {"release/SHA256SUMS"} <= set(sim.attested)
    assert ("release", "GitHub release") in sim.skipped_steps
