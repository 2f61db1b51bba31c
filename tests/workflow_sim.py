"""A local stand-in for GitHub Actions that runs the generated workflow's jobs (tests/test_workflow_sim.py).

Jobs run in dependency order (`needs:`), one matrix entry at a time, each in a fresh `git clone` of the
repository at a given commit. Between them passes only what the workflow passes:
- the plan job's outputs (`needs.plan.outputs.*`, read from `$GITHUB_OUTPUT` as GitHub does);
- actions/upload-artifact and download-artifact: a directory per artifact name (hidden files only with
  `include-hidden-files`; modes and mtimes are not kept, as in an artifact zip; a name can be uploaded once);
- actions/cache restore/save: a directory per key (a tar keeps modes).

What is not simulated, by name: the host setup steps (this machine is already set up), the `images` job and
the image-tar caches with the `invoke ci-images` lines (the images are in this engine by their
content-hash tag; GHCR and the tar hand-off are untested, docs/ci.md), attest-build-provenance (its
subject globs must match files), and the GitHub release upload. Anything else the workflow uses - an
unknown action, expression or condition - is an error, so a change to the template cannot slip past.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
HOST_SETUP_STEPS = {"Docker engine and host dependencies", "Planner dependencies",
                    "Python deps for macOS (plain PyPI torch, coremltools)"}
NOT_SIMULATED_RUN = {"GitHub release"}  # gh release create/upload: GitHub itself
NOT_SIMULATED_JOBS = {"images"}
IMAGE_CACHE_DIR = "ci-images/"
SUDO_SHIM = "#!/bin/sh\nwhile [ $# -gt 0 ]; do case \"$1\" in --preserve-env=*|-E) shift;; *) break;; esac; done\n" \
            "exec \"$@\"\n"


class SimError(AssertionError):
    pass


def _braces(pattern: str) -> list[str]:
    """minimatch brace expansion of one `{a,b}` group (what layout._pattern writes)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [x for alt in m.group(1).split(",") for x in _braces(pattern[:m.start()] + alt + pattern[m.end():])]


def _files(root: Path, hidden: bool) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and (hidden or not any(part.startswith(".") for part in rel.parts)):
            out.append(rel)
    return out


def order(jobs: dict) -> list[str]:
    """Job ids so that every job comes after the jobs it needs (ties in file order)."""
    done: list[str] = []
    while len(done) < len(jobs):
        ready = [j for j, job in jobs.items() if j not in done and all(n in done for n in _needs(job))]
        if not ready:
            raise SimError(f"jobs {sorted(set(jobs) - set(done))} need each other")
        done.append(ready[0])
    return done


def _needs(job: dict) -> list[str]:
    n = job.get("needs", [])
    return [n] if isinstance(n, str) else list(n)


class Simulation:
    def __init__(self, repo: Path, commit: str, work: Path, env: dict[str, str], ref: str = "refs/tags/v0.0.0-sim"):
        self.repo, self.commit, self.work, self.ref = Path(repo), commit, Path(work), ref
        self.caches, self.artifacts = self.work / "caches", self.work / "artifacts"
        for d in (self.caches, self.artifacts, self.work / "bin"):
            d.mkdir(parents=True, exist_ok=True)
        (self.work / "bin" / "sudo").write_text(SUDO_SHIM)
        (self.work / "bin" / "sudo").chmod(0o755)
        self.env = {**env, "PATH": f"{self.work / 'bin'}:{env.get('PATH', '')}", "GITHUB_REF": ref}
        self.job_outputs: dict[str, dict[str, str]] = {}
        self.ran: list[tuple[str, str]] = []  # (job, matrix group or "") in the order they ran
        self.skipped_steps: list[tuple[str, str]] = []
        self.attested: list[str] = []
        self.clones: dict[tuple[str, int], Path] = {}

    # ---- expressions -----------------------------------------------------------------------------------
    def _value(self, expr: str, ctx: dict) -> str:
        m = re.fullmatch(r"matrix\.([\w-]+)", expr)
        if m:
            if m.group(1) not in ctx["matrix"]:
                raise SimError(f"${{{{ {expr} }}}}: the matrix entry has no {m.group(1)} ({ctx['matrix']})")
            return str(ctx["matrix"][m.group(1)])
        m = re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr)
        if m:
            return ctx["steps"].get(m.group(1), {}).get(m.group(2), "")
        m = re.fullmatch(r"needs\.([\w-]+)\.outputs\.([\w-]+)", expr)
        if m:
            return self.job_outputs.get(m.group(1), {}).get(m.group(2), "")
        if re.fullmatch(r"secrets\.\w+", expr):
            return ""  # the simulation has no secrets; tiny models get none anyway
        raise SimError(f"${{{{ {expr} }}}}: an expression the simulation does not know")

    def expand(self, text, ctx: dict):
        if not isinstance(text, str):
            return text
        return EXPR.sub(lambda m: self._value(m.group(1), ctx), text)

    def condition(self, cond, ctx: dict) -> bool:
        if cond is None:
            return True
        cond = str(cond).strip()
        if cond == "always()":
            return True
        m = re.fullmatch(r"startsWith\(github\.ref, '([^']*)'\)", cond)
        if m:
            return self.ref.startswith(m.group(1))
        m = re.fullmatch(r"(steps\.[\w-]+\.outputs\.[\w-]+) (!=|==) '([^']*)'", cond)
        if m:
            v = self._value(m.group(1), ctx)
            return (v != m.group(3)) if m.group(2) == "!=" else (v == m.group(3))
        raise SimError(f"if: {cond}: a condition the simulation does not know")

    # ---- the workflow ----------------------------------------------------------------------------------
    def run(self, workflow: Path, log=print) -> None:
        wf = yaml.safe_load(Path(workflow).read_text())
        for jid in order(wf["jobs"]):
            if jid in NOT_SIMULATED_JOBS:
                continue
            self.run_job(jid, wf["jobs"][jid], log)

    def _entries(self, job: dict) -> list[dict]:
        strategy = job.get("strategy")
        if not strategy:
            return [{}]
        matrix = strategy["matrix"]
        if isinstance(matrix, str):
            m = re.fullmatch(r"\$\{\{ fromJSON\(needs\.plan\.outputs\.([\w-]+)\) \}\}", matrix)
            if not m or m.group(1) not in self.job_outputs.get("plan", {}):
                raise SimError(f"strategy.matrix {matrix}: no such plan output")
            matrix = json.loads(self.job_outputs["plan"][m.group(1)])
        if set(matrix) != {"include"}:
            raise SimError(f"strategy.matrix: only `include` lists are simulated, not {sorted(matrix)}")
        if not 1 <= len(matrix["include"]) <= 256:
            raise SimError(f"strategy.matrix: {len(matrix['include'])} entries (GitHub takes 1..256)")
        return matrix["include"]

    def run_job(self, jid: str, job: dict, log) -> None:
        if not self.condition(job.get("if"), {"matrix": {}, "steps": {}}):
            return
        for i, entry in enumerate(self._entries(job)):
            clone = self.work / "clones" / f"{jid}-{i}"
            subprocess.run(["git", "clone", "-q", str(self.repo), str(clone)], check=True)
            subprocess.run(["git", "-C", str(clone), "checkout", "-q", "--detach", self.commit], check=True)
            self.clones[(jid, i)] = clone
            ctx = {"matrix": entry, "steps": {}}
            log(f"sim: {jid} {entry.get('group', '')}".rstrip())
            for step in job["steps"]:
                if self.condition(step.get("if"), ctx):
                    self.run_step(jid, step, clone, ctx)
            self.ran.append((jid, entry.get("group", "")))
            if "outputs" in job:
                self.job_outputs[jid] = {k: self.expand(v, ctx) for k, v in job["outputs"].items()}

    def run_step(self, jid: str, step: dict, clone: Path, ctx: dict) -> None:
        name = step.get("name", step.get("uses", ""))
        if "uses" in step:
            action = step["uses"].split("@")[0]
            with_ = {k: self.expand(v, ctx) for k, v in (step.get("with") or {}).items()}
            outputs = getattr(self, "_" + action.replace("/", "_").replace("-", "_"), None)
            if outputs is None:
                raise SimError(f"{jid}: action {action} is not simulated")
            ctx["steps"][step.get("id", name)] = outputs(clone, with_) or {}
            return
        if name in HOST_SETUP_STEPS or name in NOT_SIMULATED_RUN:
            self.skipped_steps.append((jid, name))
            return
        env = {**self.env, **{k: self.expand(v, ctx) for k, v in (step.get("env") or {}).items()}}
        gh_out = clone / ".sim-github-output"
        gh_out.write_text("")
        env["GITHUB_OUTPUT"] = str(gh_out)
        script = "\n".join(line for line in step["run"].splitlines() if "invoke ci-images" not in line)
        proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=clone, env=env,
                              capture_output=True, text=True)
        (self.work / "logs").mkdir(exist_ok=True)
        (self.work / "logs" / f"{jid}-{ctx['matrix'].get('group', '')}-{name}.log".replace("/", "_")).write_text(
            proc.stdout + proc.stderr)
        if proc.returncode:
            raise SimError(f"{jid} {ctx['matrix'].get('group', '')} step {name!r} exited {proc.returncode}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        if "id" in step:
            ctx["steps"][step["id"]] = dict(line.split("=", 1) for line in gh_out.read_text().splitlines() if line)
        gh_out.unlink()

    # ---- actions -----------------------------------------------------------------------------------------
    def _actions_checkout(self, clone: Path, with_: dict) -> dict:
        if with_.get("persist-credentials") is not False:
            raise SimError("actions/checkout without persist-credentials: false")
        return {}

    def _actions_setup_python(self, clone: Path, with_: dict) -> dict:
        return {}  # this host's Python, which has the requirements installed

    def _actions_cache_restore(self, clone: Path, with_: dict) -> dict:
        if with_["path"].startswith(IMAGE_CACHE_DIR):
            return {}  # images: see the module docstring
        src = self.caches / with_["key"]
        if not src.is_dir():
            if with_.get("fail-on-cache-miss"):
                raise SimError(f"cache {with_['key']}: miss with fail-on-cache-miss")
            return {"cache-hit": "false"}
        shutil.copytree(src, clone / with_["path"], dirs_exist_ok=True, symlinks=True)
        return {"cache-hit": "true"}

    def _actions_cache_save(self, clone: Path, with_: dict) -> dict:
        if with_["path"].startswith(IMAGE_CACHE_DIR):
            return {}
        dest = self.caches / with_["key"]
        if not dest.exists():  # GitHub keeps the first entry of a key
            shutil.copytree(clone / with_["path"], dest, symlinks=True)
        return {}

    def _actions_upload_artifact(self, clone: Path, with_: dict) -> dict:
        name, root = with_["name"], clone / with_["path"]
        dest = self.artifacts / name
        if dest.exists():
            raise SimError(f"artifact {name}: uploaded twice in one run (GitHub refuses the second)")
        files = _files(root, bool(with_.get("include-hidden-files"))) if root.is_dir() else []
        if not files and with_.get("if-no-files-found") == "error":
            raise SimError(f"artifact {name}: no files under {with_['path']}")
        for rel in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, dest / rel)  # contents only: an artifact zip keeps no modes/mtimes
        return {}

    def _actions_download_artifact(self, clone: Path, with_: dict) -> dict:
        patterns = _braces(with_["pattern"])
        names = sorted(a.name for a in self.artifacts.iterdir() if any(fnmatch.fnmatchcase(a.name, p) for p in patterns))
        for n in names:
            dest = clone / with_["path"] if with_.get("merge-multiple") else clone / with_["path"] / n
            for rel in _files(self.artifacts / n, hidden=True):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.artifacts / n / rel, dest / rel)
        return {}

    def _actions_attest_build_provenance(self, clone: Path, with_: dict) -> dict:
        subjects = [p for g in with_["subject-path"].split(",") for p in sorted(clone.glob(g.strip()))]
        if not subjects:
            raise SimError(f"attest-build-provenance: {with_['subject-path']} matches no file")
        self.attested = [p.relative_to(clone).as_posix() for p in subjects]
        return {}
