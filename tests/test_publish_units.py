"""`invoke publish --dry-run` on a release of a hand-made store (no Docker, no Hub): the exact commit."""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from builders.release.assemble import build_release
from tests.helpers import invoke
from tests.test_release_units import CELLS, MATRIX, _store

NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": ""}  # any network call would fail


@pytest.fixture
def release(tmp_path) -> Path:
    out = _store(tmp_path / "dist", CELLS)
    build_release(out, tmp_path / "rel", None, MATRIX, limit=300)  # m-F16.gguf ships in 4 parts
    return tmp_path / "rel"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_dry_run_writes_the_exact_commit(release, tmp_path):
    dry = tmp_path / "dry"
    proc = invoke("publish", "--repo", "my-org/tiny-GGUF", "--release", str(release), "--dry-run", str(dry),
                  "--collection", "my-org/tiny-models-0123456789abcdef", "--token", "hf_SECRETvalue", env=NO_HUB,
                  check=0)
    assert "nothing was uploaded" in proc.stdout
    files = dry / "files"
    staged = {p.relative_to(files).as_posix(): p for p in files.rglob("*") if p.is_file()}
    rel = json.loads((release / "release.json").read_text())
    # assets: single files as they are, split ones reassembled, tars unpacked into <node key>/
    assert _sha(staged["m-F16.gguf"]) == next(a["sha256"] for a in rel["assets"] if a["name"] == "m-F16.gguf")
    assert staged["m.mlc.q.weights/sub/tokenizer.json"].read_bytes() == b'{"v": 1}'
    assert "m.mlc.q.weights.tar" not in staged and not any(".part" in k for k in staged)
    assert {"buildmatrix/provenance.intoto.json", "buildmatrix/release.json", "buildmatrix/SHA256SUMS",
            "buildmatrix/manifests/m.gguf.Q8_0.json", "README.md"} <= set(staged)
    calls = json.loads((dry / "operations.json").read_text())
    assert [c["call"] for c in calls] == ["create_repo", "create_commit", "add_collection_item"]
    ops = {o["path_in_repo"]: o for o in calls[1]["operations"]}
    assert set(ops) == set(staged)
    for path, o in ops.items():
        assert o["sha256"] == _sha(staged[path]) and o["size"] == staged[path].stat().st_size
    assert not [p for p in dry.rglob("*") if p.is_file() and b"hf_SECRETvalue" in p.read_bytes()]


def test_model_card_front_matter_and_one_row_per_artifact(release, tmp_path):
    invoke("publish", "--repo", "my-org/tiny-GGUF", "--release", str(release), "--dry-run", str(tmp_path / "dry"),
           "--quantized-by", "me", env=NO_HUB, check=0)
    card = (tmp_path / "dry" / "files" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta == json.loads((tmp_path / "dry" / "card-metadata.json").read_text())
    assert meta["quantized_by"] == "me" and meta["pipeline_tag"] == "text-generation"
    assert {"buildmatrix", "gguf", "llama.cpp", "F16", "Q8_0"} <= set(meta["tags"])
    assert "base_model" not in meta  # a tiny generated model has no Hub base model
    rows = [line for line in body.splitlines() if line.startswith("| `")]
    rel = json.loads((release / "release.json").read_text())
    assert len(rows) == len(rel["assets"])
    for a in rel["assets"]:
        row = next(r for r in rows if r.startswith(f"| `{a['name'].removesuffix('.tar')}"))
        assert a["sha256"][:16] in row and row.endswith("| yes |")
    q8 = next(r for r in rows if "m-Q8_0.gguf" in r)
    assert "`m.gguf.Q8_0.cpu`" in q8 and "| 1.000 |" in q8
    assert "llama-cli -m m-F16.gguf" in body


def test_hub_model_card_names_base_model_and_revision(tmp_path):
    out = _store(tmp_path / "dist", CELLS)
    for p in out.glob(".store/*/manifest.json"):
        m = json.loads(p.read_text())
        m["model"].update(source="meta-llama/Llama-3.2-1B", revision="a" * 40)
        p.write_text(json.dumps(m))
    build_release(out, tmp_path / "rel", None, MATRIX)
    invoke("publish", "--repo", "o/n", "--release", str(tmp_path / "rel"), "--dry-run", str(tmp_path / "dry"),
           env=NO_HUB, check=0)
    meta = json.loads((tmp_path / "dry" / "card-metadata.json").read_text())
    assert meta["base_model"] == "meta-llama/Llama-3.2-1B" and meta["base_model_revision"] == "a" * 40
    assert meta["base_model_relation"] == "quantized"
    stmt = json.loads((tmp_path / "rel" / "provenance.intoto.json").read_text())
    uris = [d.get("uri", "") for d in stmt["predicate"]["buildDefinition"]["resolvedDependencies"]]
    assert f"https://huggingface.co/meta-llama/Llama-3.2-1B/resolve/{'a' * 40}/model.safetensors" in uris


@pytest.mark.parametrize("args, fragment", [
    (["--repo", "nope"], "--repo 'nope': pass the Hub repository as ORG/NAME"),
    (["--repo", "a/b..c", "--dry-run", "{tmp}/d"], "--repo 'a/b..c': not a valid Hub repository id"),
    (["--repo", "a/b"], "no Hub token: pass --token or set HF_TOKEN"),
    (["--repo", "a/b", "--dry-run", "{tmp}/full"], "--dry-run {tmp}/full: exists and is not an empty directory"),
    (["--repo", "a/b", "--release", "{tmp}/none", "--dry-run", "{tmp}/d"], "{tmp}/none: no release.json"),
])
def test_bad_publish_input_exits_2_with_one_line(release, tmp_path, args, fragment):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--release" not in args:
        args += ["--release", str(release)]
    proc = invoke("publish", *args, env=NO_HUB)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert fragment.replace("{tmp}", str(tmp_path)) in proc.stderr
    assert (tmp_path / "full" / "x").read_text() == "keep"
