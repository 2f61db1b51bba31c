"""`invoke release`, `invoke release --check` and `invoke publish --dry-run` on a real build (Docker,
llama.cpp): the default tiny-llama GGUF build, its nodes imported from the session's seed store."""

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from builders.release.provenance import schema
from builders.store import CACHE_FROM_ENV
from helpers import invoke, manifests, sha256

pytestmark = pytest.mark.docker

NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": ""}


@pytest.fixture(scope="module")
def built(seed_store, tmp_path_factory) -> Path:
    """`invoke build` (the default: tiny-llama gguf F16 / Q8_0 / Q4_K_M on cpu), importing the seed's nodes
    (a module fixture is set up before the function-scoped _seeded_cache, so the seed is named here)."""
    out = tmp_path_factory.mktemp("dist-release")
    invoke("build", "--out", str(out), check=0, env={CACHE_FROM_ENV: str(seed_store)})
    return out


@pytest.fixture(scope="module")
def released(built, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("rel") / "release"
    invoke("release", "--out", str(built), "--dest", str(dest), check=0)
    return dest


def test_release_checks_with_sha256sum_and_holds_every_artifact_once(built, released):
    proc = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=released, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    index = json.loads((built / "index.json").read_text())
    built_files = {f["sha256"]: Path(f["path"]).name for a in index["artifacts"] for f in a["files"]}
    assert len(built_files) == 3
    for sha, name in built_files.items():
        assert sha256(released / name) == sha
    rel = json.loads((released / "release.json").read_text())
    assert sorted(c["id"] for c in rel["cells"]) == sorted(a["cell"] for a in index["artifacts"])
    assert all(c["verification"]["passed"] is True for c in rel["cells"])


def test_provenance_is_an_intoto_v1_slsa_v1_statement_listing_every_artifact(built, released):
    stmt = json.loads((released / "provenance.intoto.json").read_text())
    jsonschema.Draft202012Validator(schema()).validate(stmt)
    index = json.loads((built / "index.json").read_text())
    assert {s["digest"]["sha256"] for s in stmt["subject"]} == {f["sha256"] for a in index["artifacts"]
                                                                for f in a["files"]}
    deps = stmt["predicate"]["buildDefinition"]["resolvedDependencies"]
    ms = manifests(built)
    model_files = ms["tiny-llama.gguf.F16"]["model"]["files_sha256"]
    assert model_files and all({"sha256": sha} in [d.get("digest") for d in deps] for sha in model_files.values())
    images = {d["name"]: d for d in deps if d["name"].startswith("image:")}
    assert images["image:gguf"]["annotations"]["ref"] == ms["tiny-llama.gguf.F16"]["image"]["ref"]
    assert images["image:gguf"]["digest"]["sha256"] == ms["tiny-llama.gguf.F16"]["image"]["id"].split(":")[1]
    assert any("gitCommit" in d.get("digest", {}) for d in deps)


def test_manifests_split_into_reproducible_part_and_run_record(built, released):
    ms = manifests(built)
    for key, m in ms.items():
        repro = json.loads((released / "manifests" / f"{key}.json").read_text())
        assert "timings" not in repro and "id" not in repro["image"]
        assert repro["outputs"] == m["outputs"] and repro["verification"] == m["verification"]
    record = {r["node"]: r for r in json.loads((released / "run-record.json").read_text())["nodes"]}
    assert set(record) == set(ms)  # tiny model, reference and the three conversions
    assert all("timings" in r and r["image.id"].startswith("sha256:") for r in record.values())


def test_two_releases_of_the_same_store_are_the_same_bytes(built, tmp_path):
    trees = []
    for name in ("first", "second"):  # back to back: the code commit is part of the provenance
        invoke("release", "--out", str(built), "--dest", str(tmp_path / name), check=0)
        trees.append({p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*")
                      if p.is_file()})
    assert trees[0] == trees[1]


def test_publish_dry_run_card_lists_every_artifact_with_its_figures(built, released, tmp_path):
    proc = invoke("publish", "--repo", "my-org/tiny-llama-GGUF", "--release", str(released), "--dry-run",
                  str(tmp_path / "dry"), env=NO_HUB, check=0)
    assert "nothing was uploaded" in proc.stdout
    card = (tmp_path / "dry" / "files" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert {"gguf", "llama.cpp", "F16", "Q8_0", "Q4_K_M"} <= set(meta["tags"]) and meta["library_name"] == "gguf"
    for key, m in manifests(built).items():
        if not key.startswith("tiny-llama.gguf."):
            continue
        (name,) = [Path(o["path"]).name for o in m["outputs"]]
        row = next(line for line in card.splitlines() if line.startswith(f"| `{name}`"))
        assert f"{m['verification']['checks']['top1']:.3f}" in row
        assert f"{m['verification']['checks']['max_abs_logit']:.3g}" in row
        assert sha256(tmp_path / "dry" / "files" / name) == m["outputs"][0]["sha256"]


def test_check_rebuilds_a_small_release_from_nothing_bit_identically(built, tmp_path):
    dest = tmp_path / "f16"
    invoke("release", "--out", str(built), "--dest", str(dest), "--only", "tiny-llama.gguf.F16.cpu", check=0)
    # BUILDMATRIX_CACHE_FROM names the seed store here (conftest): --check must not import from it
    proc = invoke("release", "--check", "--dest", str(dest), "--check-out", str(tmp_path / "rebuild"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bit-identical  tiny-llama.gguf.F16.cpu" in proc.stdout
    assert "3/3 nodes and 1/1 assets bit-identical" in proc.stdout  # tiny model, reference, F16 conversion
    rebuilt = manifests(tmp_path / "rebuild")
    assert set(rebuilt) == {"tiny-llama.model", "tiny-llama.reference", "tiny-llama.gguf.F16"}
    for key in rebuilt:  # every node ran again: nothing was imported from the seed or the original store
        assert f"run {key}" in proc.stderr, proc.stderr[-2000:]
