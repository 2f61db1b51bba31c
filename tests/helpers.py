"""Shared helpers for tests that drive the real CLI."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args, check=None, timeout=3000, env=None):
    """Run `python -m invoke ARGS` in the project root; returns CompletedProcess (text)."""
    proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def plan_json(out, *args):
    proc = invoke("plan", "--json", "--out", str(out), *args, check=0)
    return json.loads(proc.stdout)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def manifests(out: Path) -> dict[str, dict]:
    """node key -> manifest of every promoted node under out."""
    result = {}
    for p in Path(out).glob(".store/*/manifest.json"):
        m = json.loads(p.read_text())
        result[m["node"]["key"]] = m
    return result


def assert_outputs_match_manifest(out: Path, manifest: dict) -> None:
    d = Path(out) / ".store" / manifest["node"]["digest"] / "out"
    listed = {o["path"]: o for o in manifest["outputs"]}
    on_disk = {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
    assert on_disk == set(listed), f"{manifest['node']['key']}: files {on_disk ^ set(listed)} differ from manifest"
    for rel, o in listed.items():
        assert sha256(d / rel) == o["sha256"], f"{rel}: sha256 differs from manifest"
        assert (d / rel).stat().st_size == o["size"]


def readable_by_nodes(path: Path) -> Path:
    """As root, node containers run as an unprivileged uid and refuse an input it cannot read (one line,
    builders/executors/node_user.py). pytest makes its temp dirs 0700: open `path` (recursively) and the
    directories above it for reading, as a user's model directory would be. Returns path."""
    path = Path(path).resolve()
    for d in [path, *path.parents]:
        if d == Path("/"):
            break
        d.chmod(d.stat().st_mode | 0o055)
    for p in path.rglob("*"):
        p.chmod(p.stat().st_mode | (0o055 if p.is_dir() else 0o044))
    return path
