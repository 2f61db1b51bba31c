"""The store never serves a wrong artifact: real CLI, real Docker engine, real llama.cpp converter.

Each test damages a built output root the way users did (deleted entry, deleted manifest with staging
left behind, a flipped byte in a stored or a published file, a replaced file in a --cache-from root,
two builds on one --out, kill -9 mid-node) and checks that the next build detects it, rebuilds or
refuses, and ends with every published file equal to its manifest - never `outputs: []` passing.
The tiny Llama, its reference and its F16 GGUF come from the session's seed store; the Q8_0 node
(one llama.cpp conversion + verification in the gguf image) is the artifact rebuilt.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, assert_outputs_match_manifest, invoke, manifests, sha256

pytestmark = pytest.mark.docker

CELL = ["--model", "tiny:llama", "--backends", "gguf", "--quants", "Q8_0", "--targets", "cpu"]
KEY = "tiny-llama.gguf.Q8_0"


def build(out: Path, *extra, check=0):
    return invoke("build", *CELL, "--out", str(out), *extra, check=check)


def log_lines(proc, start: str) -> list[str]:
    """The build log's lines starting with `start`, with the terminal's wrapping undone."""
    text = " ".join(proc.stderr.split())
    heads = ("damaged ", "refused import ", "imported ", "run ", "built ", "orphan ", "failed ")
    for h in heads:
        text = text.replace(f" {h}", f"\n{h}")
    return [ln for ln in text.splitlines() if ln.startswith(start)]


def assert_root_consistent(out: Path) -> None:
    """Every manifest matches its files, every index entry lists files, every published file matches."""
    for m in manifests(out).values():
        assert m["outputs"], f"{m['node']['key']}: a promoted node without outputs"
        assert_outputs_match_manifest(out, m)
    index = json.loads((out / "index.json").read_text())
    assert index["artifacts"], "index.json lists no artifact"
    for a in index["artifacts"]:
        assert a["files"], f"{a['cell']}: outputs: [] in index.json"
        assert a["verification"]["passed"] is True
        for f in a["files"]:
            assert sha256(out / f["path"]) == f["sha256"], f"{f['path']}: published file differs from manifest"


def q8(out: Path) -> dict:
    return manifests(out)[KEY]


def gguf_of(out: Path, m: dict) -> Path:
    (o,) = m["outputs"]
    return out / ".store" / m["node"]["digest"] / "out" / o["path"]


def published(out: Path, m: dict) -> Path:
    (o,) = m["outputs"]
    (p,) = [p for p in out.glob(f"tiny-llama/*/gguf/{o['path']}")]
    return p


def flip_byte(path: Path, offset: int = -100) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime


@pytest.fixture(scope="module")
def built_root(tmp_path_factory, seed_store):
    """One output root holding the Q8_0 cell (model, reference, F16 imported from the seed store)."""
    from builders.store import CACHE_FROM_ENV

    out = tmp_path_factory.mktemp("integrity") / "dist"
    invoke("build", *CELL, "--out", str(out), check=0, env={CACHE_FROM_ENV: str(seed_store)})
    assert_root_consistent(out)
    return out


@pytest.fixture
def out(built_root, tmp_path):
    """A private copy of the built root (store, staging and published files), so tests damage their own."""
    dest = tmp_path / "dist"
    shutil.copytree(built_root, dest, symlinks=True)
    return dest


def test_store_files_are_read_only_and_published_files_are_copies(out):
    m = q8(out)
    stored, pub = gguf_of(out, m), published(out, m)
    assert oct(stored.stat().st_mode & 0o777) == "0o444"
    assert stored.stat().st_ino != pub.stat().st_ino


def test_deleted_store_entry_is_rebuilt_not_served_empty(out):
    m = q8(out)
    shutil.rmtree(out / ".store" / m["node"]["digest"])
    assert (out / ".staging" / m["node"]["digest"] / "work" / ".steps.json").is_file(), "staging left behind"
    proc = build(out)
    m2 = q8(out)
    assert {s["status"] for s in m2["timings"]["steps"].values()} == {"ran"}, "no step is skipped"
    assert m2["outputs"] == m["outputs"], "the same bytes again (reproducible)"
    assert "tiny-llama.gguf.Q8_0.cpu" in proc.stdout
    assert_root_consistent(out)


def test_deleted_manifest_with_staging_left_is_moved_aside_and_rebuilt(out):
    m = q8(out)
    os.remove(out / ".store" / m["node"]["digest"] / "manifest.json")
    plan = json.loads(invoke("plan", "--json", *CELL, "--out", str(out), check=0).stdout)
    (node,) = [n for n in plan["nodes"] if n["key"] == KEY]
    assert (node["cache"], node["cached"], node["cache_problem"]) == ("damaged", False, "manifest.json is missing")
    proc = build(out)
    (line,) = log_lines(proc, "damaged ")
    assert KEY in line and "manifest.json is missing" in line and "moved aside" in line
    (aside,) = list((out / ".quarantine").iterdir())
    assert (aside / "problem.txt").read_text().strip() == "manifest.json is missing"
    assert q8(out)["outputs"] == m["outputs"]
    assert_root_consistent(out)


def test_flipped_byte_in_a_stored_artifact_is_detected_and_rebuilt(out):
    m = q8(out)
    flip_byte(gguf_of(out, m))
    proc = build(out)
    (line,) = log_lines(proc, "damaged ")
    assert KEY in line and m["outputs"][0]["path"] in line and "sha256" in line
    assert q8(out)["outputs"] == m["outputs"]
    assert sha256(gguf_of(out, m)) == m["outputs"][0]["sha256"]
    assert_root_consistent(out)


def test_flipped_byte_in_a_published_artifact_is_replaced_and_the_store_untouched(out):
    m = q8(out)
    flip_byte(published(out, m))
    assert sha256(gguf_of(out, m)) == m["outputs"][0]["sha256"], "editing dist/ cannot reach the store"
    proc = build(out)
    assert not log_lines(proc, "damaged ") and not log_lines(proc, "run "), "the node stays cached"
    assert sha256(published(out, m)) == m["outputs"][0]["sha256"]
    assert_root_consistent(out)


def test_replaced_file_in_a_cache_from_root_is_refused_and_rebuilt(built_root, seed_store, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(built_root, other, symlinks=True)
    m = q8(other)
    evil = gguf_of(other, m)
    os.chmod(evil, 0o644)
    payload = b"EVIL PAYLOAD"
    evil.write_bytes(payload + evil.read_bytes()[len(payload):])  # same size
    mine = tmp_path / "mine"
    proc = build(mine, "--cache-from", f"{other},{seed_store}")
    (line,) = log_lines(proc, "refused import ")
    assert KEY in line and m["outputs"][0]["path"] in line and "sha256" in line
    assert [ln for ln in log_lines(proc, "run ") if KEY in ln]
    assert_root_consistent(mine)
    assert sha256(published(mine, q8(mine))) == m["outputs"][0]["sha256"]
    assert payload not in published(mine, q8(mine)).read_bytes()
    model = manifests(mine)["tiny-llama.model"]  # imported (from `other`, the first --cache-from root)
    assert_outputs_match_manifest(other, model)
    for o in model["outputs"]:
        inodes = {(r / ".store" / model["node"]["digest"] / "out" / o["path"]).stat().st_ino
                  for r in (mine, other, seed_store)}
        assert len(inodes) == 3, "imports are copies, never links into another root"


def test_two_builds_on_one_out_one_exits_2(tmp_path):
    out = tmp_path / "dist"
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen([sys.executable, "-m", "invoke", "build", *CELL, "--out", str(out)], cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 120
        while not ((out / ".lock").is_file() and (out / ".lock").read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first build never took the lock"
            time.sleep(0.1)
        second = build(out, check=2)
        (line,) = second.stderr.strip().splitlines()
        assert "another build is using this output root" in line and f"pid {first.pid} " in line
        assert first.wait(timeout=1200) == 0, (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    assert_root_consistent(out)


def _root_containers(client, out: Path) -> list:
    from builders.executors.docker import ROOT_LABEL

    return client.containers.list(all=True, filters={"label": f"{ROOT_LABEL}={out.resolve()}"})


def test_kill_9_mid_node_leaves_no_orphan_after_the_rerun(tmp_path, docker_engine):
    out = tmp_path / "dist"
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "build", *CELL, "--out", str(out)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    try:
        deadline = time.monotonic() + 600
        while not [c for c in _root_containers(docker_engine, out) if c.labels.get("buildmatrix.node") == KEY]:
            assert proc.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "the Q8_0 container never started"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    left = _root_containers(docker_engine, out)
    assert left, "kill -9 leaves the node's container behind (the case the rerun must clean up)"
    assert KEY not in manifests(out)
    rerun = build(out)
    assert log_lines(rerun, "orphan ")
    assert _root_containers(docker_engine, out) == [], "no orphan container remains"
    assert_root_consistent(out)
