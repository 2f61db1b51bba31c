"""`invoke release` on small hand-made stores (no Docker): layout, determinism, parts, refusals.

The stores here are real directories in the store's layout (index.json, .store/<digest>/{out,manifest.json})
so every error path runs fast; tests/test_release_build.py does the same on a real build."""

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from builders.release import ReleaseError, provenance
from builders.release.assemble import build_release
from builders.release.parts import PartWriter
from tests.helpers import ROOT, invoke

MATRIX = ROOT / "matrix.yaml"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _node(out: Path, key: str, files: dict[str, bytes], parents: dict | None = None, passed=True,
          image_id="sha256:" + "ab" * 32) -> str:
    digest = _sha(key.encode())
    d = out / ".store" / digest
    for rel, data in files.items():
        (d / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / "out" / rel).write_bytes(data)
    manifest = {
        "schema": 2, "builder_version": "0.1.0",
        "node": {"key": key, "kind": "gguf-quantize", "digest": digest, "cells": []},
        "model": {"name": "m", "source": "tiny:llama", "revision": "tiny-1234567", "digest": "0" * 64,
                  "architecture": "LlamaForCausalLM", "files_sha256": {"model.safetensors": "1" * 64}},
        "backend": "gguf", "quant": key.split(".")[-1], "target": None, "options": {"quant": "x"},
        "parents": {r: {"key": k, "digest": _sha(k.encode()), "outputs": {}} for r, k in (parents or {}).items()},
        "image": {"name": "gguf", "ref": "buildmatrix/gguf:73be836f1174", "id": image_id, "tools": {"x": "1"}},
        "outputs": [{"path": p, "size": len(b), "sha256": _sha(b)} for p, b in sorted(files.items())],
        "verification": {"passed": passed, "checks": {"top1": 1.0}, "failures": [] if passed else ["top1 0.1 < 0.9"]},
        "thresholds": {"top1_min": 0.9}, "deferred": [], "notes": [], "reports": {},
        "timings": {"seconds": 1.5, "steps": {}}, "source_date_epoch": 315532800,
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return digest


def _store(out: Path, cells: dict[str, str], passed=True) -> Path:
    """cells: cell id -> artifact node key; nodes: m.gguf.F16 (one file), m.mlc.q.weights (several files),
    m.mlc.q.lib.cpu (one file, weights as companion)."""
    out.mkdir(parents=True, exist_ok=True)
    _node(out, "m.gguf.F16", {"m-F16.gguf": b"GGUF" + b"\1" * 1000})
    _node(out, "m.gguf.Q8_0", {"m-Q8_0.gguf": b"GGUF" + b"\2" * 700}, {"source": "m.gguf.F16"}, passed=passed)
    _node(out, "m.mlc.q.weights", {"params_shard_0.bin": b"\3" * 300, "mlc-chat-config.json": b"{}",
                                   "sub/tokenizer.json": b'{"v": 1}'})
    _node(out, "m.mlc.q.lib.cpu", {"m-q-cpu.so": b"\x7fELF" + b"\4" * 50}, {"weights": "m.mlc.q.weights"})
    index = [{"cell": c, "node": k, "digest": _sha(k.encode()), "manifest": "", "files": [], "verification": {},
              "deferred": []} for c, k in cells.items()]
    (out / "index.json").write_text(json.dumps({"schema": 1, "artifacts": index}))
    return out


CELLS = {"m.gguf.F16.cpu": "m.gguf.F16", "m.gguf.F16.cuda": "m.gguf.F16", "m.gguf.Q8_0.cpu": "m.gguf.Q8_0",
         "m.mlc.q.cpu": "m.mlc.q.lib.cpu"}


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_release_layout_checksums_and_dedup(tmp_path):
    out = _store(tmp_path / "dist", CELLS)
    rel = build_release(out, tmp_path / "rel", None, MATRIX)
    files = _tree(tmp_path / "rel")
    assert sorted(a["name"] for a in rel.assets) == ["m-F16.gguf", "m-Q8_0.gguf", "m-q-cpu.so", "m.mlc.q.weights.tar"]
    assert files["m-F16.gguf"] == b"GGUF" + b"\1" * 1000  # cpu and cuda cells share one copy
    proc = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / "rel", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listed = {line.split("  ", 1)[1] for line in files["SHA256SUMS"].decode().splitlines()}
    assert listed == set(files) - {"SHA256SUMS"}
    release = json.loads(files["release.json"])
    cells = {c["id"]: c["assets"] for c in release["cells"]}
    assert cells["m.mlc.q.cpu"] == ["m-q-cpu.so", "m.mlc.q.weights.tar"]  # the library ships with its weights
    assert cells["m.gguf.F16.cuda"] == cells["m.gguf.F16.cpu"] == ["m-F16.gguf"]
    # manifests: reproducible part (no timings, no image id) + the run record
    for key in ("m.gguf.F16", "m.gguf.Q8_0", "m.mlc.q.weights", "m.mlc.q.lib.cpu"):
        m = json.loads(files[f"manifests/{key}.json"])
        assert "timings" not in m and "id" not in m["image"] and m["image"]["ref"].endswith("73be836f1174")
    record = json.loads(files["run-record.json"])
    assert {r["node"]: r["timings"]["seconds"] for r in record["nodes"]}["m.gguf.Q8_0"] == 1.5
    assert all(r["image.id"].startswith("sha256:") for r in record["nodes"])


def test_tar_is_deterministic_sorted_and_owned_by_root(tmp_path):
    out = _store(tmp_path / "dist", CELLS)
    build_release(out, tmp_path / "rel", None, MATRIX)
    with tarfile.open(tmp_path / "rel" / "m.mlc.q.weights.tar") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == ["m.mlc.q.weights", "m.mlc.q.weights/sub", "m.mlc.q.weights/mlc-chat-config.json",
                         "m.mlc.q.weights/params_shard_0.bin", "m.mlc.q.weights/sub/tokenizer.json"]
        assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {(0, 0, "", "", 315532800)}
        assert tar.extractfile("m.mlc.q.weights/sub/tokenizer.json").read() == b'{"v": 1}'
    # a second store with the same outputs, written at another time, gives the same release bytes
    out2 = _store(tmp_path / "dist2", CELLS)
    for p in out2.rglob("*"):  # store files' mtimes are no part of the release
        if p.is_file():
            os.utime(p, (1_700_000_000, 1_700_000_000))
    build_release(out2, tmp_path / "rel2", None, MATRIX)
    assert _tree(tmp_path / "rel") == _tree(tmp_path / "rel2")


def test_two_releases_of_one_store_are_byte_identical(tmp_path):
    out = _store(tmp_path / "dist", CELLS)
    build_release(out, tmp_path / "a", None, MATRIX)
    build_release(out, tmp_path / "b", None, MATRIX)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_assets_over_the_limit_ship_in_parts_that_reassemble(tmp_path):
    out = _store(tmp_path / "dist", CELLS)
    rel = build_release(out, tmp_path / "rel", ["m.gguf.F16.*"], MATRIX, limit=300)
    (asset,) = rel.assets
    assert [p["name"] for p in asset["parts"]] == [f"m-F16.gguf.part00{i}" for i in range(1, 5)]
    assert [p["size"] for p in asset["parts"]] == [300, 300, 300, 104]
    d = tmp_path / "rel"
    assert not (d / "m-F16.gguf").exists()
    proc = subprocess.run(["sha256sum", "-c", "--ignore-missing", "SHA256SUMS"], cwd=d, capture_output=True, text=True)
    assert proc.returncode == 0 and "m-F16.gguf.part004: OK" in proc.stdout, proc.stdout + proc.stderr
    subprocess.run(asset["reassemble"], shell=True, cwd=d, check=True)
    proc = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=d, capture_output=True, text=True)
    assert proc.returncode == 0 and "m-F16.gguf: OK" in proc.stdout, proc.stdout + proc.stderr
    assert (d / "m-F16.gguf").read_bytes() == b"GGUF" + b"\1" * 1000


def test_part_writer_exact_multiple_and_single_part(tmp_path):
    w = PartWriter(tmp_path, "a", 4)
    w.write(b"12345678")
    got = w.close()
    assert [p["size"] for p in got.parts] == [4, 4] and got.size == 8
    w = PartWriter(tmp_path, "b", 4)
    w.write(b"1234")
    got = w.close()
    assert got.parts == [] and (tmp_path / "b").read_bytes() == b"1234"


def test_provenance_validates_and_lists_every_asset(tmp_path):
    out = _store(tmp_path / "dist", CELLS)
    rel = build_release(out, tmp_path / "rel", None, MATRIX)
    stmt = json.loads((tmp_path / "rel" / "provenance.intoto.json").read_text())
    provenance.validate(stmt)
    assert {s["name"]: s["digest"]["sha256"] for s in stmt["subject"]} == {a["name"]: a["sha256"] for a in rel.assets}
    bd = stmt["predicate"]["buildDefinition"]
    assert [c["id"] for c in bd["externalParameters"]["cells"]] == sorted(CELLS)
    assert bd["externalParameters"]["matrix"]["sha256"] == _sha(MATRIX.read_bytes())
    names = {d.get("name") for d in bd["resolvedDependencies"]}
    assert {"model:m/model.safetensors", "image:gguf", "buildmatrix"} <= names
    commit = next(d for d in bd["resolvedDependencies"] if d.get("name") == "buildmatrix")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert commit["digest"]["gitCommit"] == head


@pytest.mark.parametrize("breakage, where", [
    (lambda s: s["subject"][0].pop("digest"), "subject/0"),
    (lambda s: s.__setitem__("_type", "https://in-toto.io/Statement/v0.1"), "_type"),
    (lambda s: s["predicate"]["buildDefinition"].pop("buildType"), "predicate/buildDefinition"),
    (lambda s: s["subject"][0]["digest"].__setitem__("sha256", "XYZ"), "subject/0/digest/sha256"),
    (lambda s: s["predicate"]["runDetails"]["builder"].__setitem__("id", "not a uri"), "runDetails/builder/id"),
])
def test_schema_rejects_a_broken_statement(tmp_path, breakage, where):
    out = _store(tmp_path / "dist", CELLS)
    build_release(out, tmp_path / "rel", None, MATRIX)
    stmt = json.loads((tmp_path / "rel" / "provenance.intoto.json").read_text())
    breakage(stmt)
    with pytest.raises(RuntimeError, match="provenance statement invalid at .*" + where.split("/")[0]):
        provenance.validate(stmt)


def test_unverified_cell_is_refused_with_one_line_and_exit_2(tmp_path):
    out = _store(tmp_path / "dist", CELLS, passed=False)
    proc = invoke("release", "--out", str(out), "--dest", str(tmp_path / "rel"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "m.gguf.Q8_0.cpu is not verified (top1 0.1 < 0.9)" in lines[0], proc.stderr
    assert not (tmp_path / "rel").exists()
    # leaving it out works
    invoke("release", "--out", str(out), "--dest", str(tmp_path / "rel"), "--only", "m.gguf.F16.*,m.mlc.*", check=0)


def test_changed_store_file_is_refused_and_earlier_release_kept(tmp_path):
    out = _store(tmp_path / "dist", CELLS)
    build_release(out, tmp_path / "rel", None, MATRIX)
    before = _tree(tmp_path / "rel")
    f = next(out.glob(".store/*/out/m-Q8_0.gguf"))
    f.write_bytes(b"tampered")
    with pytest.raises(ReleaseError, match="m-Q8_0.gguf: sha256 .* differs from the manifest of m.gguf.Q8_0"):
        build_release(out, tmp_path / "rel", None, MATRIX)
    assert _tree(tmp_path / "rel") == before
    assert not list(tmp_path.glob(".rel.*"))  # no leftovers


@pytest.mark.parametrize("args, fragment", [
    (["--only", "nope.*"], "--only nope.*: matches no built cell"),
    (["--max-asset-bytes", "lots"], "--max-asset-bytes 'lots': not a number"),
    (["--matrix", "missing.yaml"], "--matrix missing.yaml: cannot read it"),
])
def test_bad_options_exit_2_with_one_line(tmp_path, args, fragment):
    out = _store(tmp_path / "dist", CELLS)
    proc = invoke("release", "--out", str(out), "--dest", str(tmp_path / "rel"), *args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr


def test_missing_index_and_foreign_dest_are_refused(tmp_path):
    proc = invoke("release", "--out", str(tmp_path / "nothing"), "--dest", str(tmp_path / "rel"))
    assert proc.returncode == 2 and "index.json: no build index; run `invoke build --out" in proc.stderr
    out = _store(tmp_path / "dist", CELLS)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    proc = invoke("release", "--out", str(out), "--dest", str(tmp_path / "mine"))
    assert proc.returncode == 2 and "not empty and not a buildmatrix release" in proc.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_check_comparison_names_the_differing_file_and_cell(tmp_path):
    """The comparison half of `release --check` (the rebuild half runs in test_release_build.py)."""
    from builders.release.read import load_release
    from builders.release.recheck import compare

    out = _store(tmp_path / "dist", CELLS)
    build_release(out, tmp_path / "rel", None, MATRIX)
    rebuilt = _store(tmp_path / "rebuilt", CELLS)
    q8 = rebuilt / ".store" / _sha(b"m.gguf.Q8_0")
    (q8 / "out" / "m-Q8_0.gguf").write_bytes(b"GGUF" + b"\2" * 699 + b"\5")
    m = json.loads((q8 / "manifest.json").read_text())
    m["outputs"][0]["sha256"] = _sha((q8 / "out" / "m-Q8_0.gguf").read_bytes())
    m["timings"] = {"seconds": 99.0}  # run-to-run fields never count as a difference
    m["image"]["id"] = "sha256:" + "cd" * 32
    (q8 / "manifest.json").write_text(json.dumps(m))
    rel, manifests = load_release(tmp_path / "rel")
    result = compare(tmp_path / "rel", rel, manifests, rebuilt, out)
    assert not result.identical
    assert {c: result.cell_identical(c) for c in CELLS} == {
        "m.gguf.F16.cpu": True, "m.gguf.F16.cuda": True, "m.gguf.Q8_0.cpu": False, "m.mlc.q.cpu": True}
    assert result.nodes["m.gguf.Q8_0"].differing == ["m-Q8_0.gguf"]
    lines = result.lines()
    assert "DIFFERS        m.gguf.Q8_0.cpu" in lines and "  differs: m.gguf.Q8_0: m-Q8_0.gguf" in lines
    if shutil.which("diffoscope"):
        (report,) = result.reports
        assert "m-Q8_0.gguf" in report.name and report.read_text().strip()
    # a file that only the rebuild has, and a changed verification figure, are differences too
    (q8 / "out" / "extra.bin").write_bytes(b"x")
    m["outputs"].append({"path": "extra.bin", "size": 1, "sha256": _sha(b"x")})
    m["verification"]["checks"]["top1"] = 0.5
    (q8 / "manifest.json").write_text(json.dumps(m))
    result = compare(tmp_path / "rel", rel, manifests, rebuilt, out)
    assert result.nodes["m.gguf.Q8_0"].differing == ["extra.bin (only in the rebuild)", "m-Q8_0.gguf",
                                                     "manifest:verification.checks.top1"]


def test_check_refuses_a_missing_release_and_a_used_check_dir(tmp_path):
    proc = invoke("release", "--check", "--dest", str(tmp_path / "none"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "none: no release.json" in proc.stderr
    out = _store(tmp_path / "dist", CELLS)
    build_release(out, tmp_path / "rel", None, MATRIX)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep").write_text("x")
    proc = invoke("release", "--check", "--dest", str(tmp_path / "rel"), "--check-out", str(tmp_path / "used"))
    assert proc.returncode == 2 and "--check-out" in proc.stderr and "not empty" in proc.stderr, proc.stderr
    assert (tmp_path / "used" / "keep").read_text() == "x"


def test_durations_anywhere_in_a_manifest_go_to_the_run_record():
    from builders.release.manifests import split

    m = {"node": {"key": "k", "digest": "d"}, "image": {"name": "mlc", "id": "sha256:x"},
         "reports": {"library": {"file": "a.so", "build_seconds": 12.5, "total_seconds": 20.0},
                     "training": {"train_seconds": 61.2, "threads": 1}, "list": [{"seconds": 1}]},
         "timings": {"seconds": 3.0, "peak_rss_mb": 812}}
    repro, record = split(m)
    assert repro["reports"] == {"library": {"file": "a.so"}, "training": {"threads": 1}, "list": [{}]}
    assert record == {"node": "k", "digest": "d", "timings": {"seconds": 3.0, "peak_rss_mb": 812},
                      "image.id": "sha256:x",
                      "reports.library.build_seconds": 12.5, "reports.library.total_seconds": 20.0,
                      "reports.training.train_seconds": 61.2, "reports.list.0.seconds": 1}
    assert m["reports"]["library"]["build_seconds"] == 12.5  # the input is untouched
