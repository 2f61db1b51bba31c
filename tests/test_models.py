"""Model sources: local directories and hub snapshots (through huggingface_hub's real cache layout, offline)."""

import hashlib
import json
import os

import pytest

from builders.errors import ModelError
from builders.models.resolve import HashCache, resolve_hub, resolve_local
from builders.models.source import parse_source

SHA = "0123456789abcdef0123456789abcdef01234567"


def make_hub_cache(root, repo="acme/tiny-thing"):
    """Lay out a Hugging Face hub cache as huggingface_hub writes it: blobs + symlinked snapshot + ref."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    files = {"config.json": json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}).encode(),
             "model.safetensors": b"\x02\x00\x00\x00\x00\x00\x00\x00{}", "tokenizer.json": b"{}"}
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "snapshots" / SHA).mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(SHA)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (repo_dir / "blobs" / blob).write_bytes(data)
        os.symlink(f"../../blobs/{blob}", repo_dir / "snapshots" / SHA / name)
    return files


def test_hub_snapshot_is_pinned_to_the_commit_and_symlinks_are_resolved(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    files = make_hub_cache(cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_never_written")
    src = parse_source("acme/tiny-thing")
    assert (src.kind, src.name, src.revision) == ("hub", "tiny-thing", "main")
    ref, path, hashes = resolve_hub(src, HashCache(tmp_path / "h.json"), tmp_path / "models", offline=True)
    assert ref.revision == SHA and ref.arch == "LlamaForCausalLM"
    assert sorted(hashes) == sorted(files)
    for name, data in files.items():
        assert not (path / name).is_symlink() and (path / name).read_bytes() == data
        assert hashes[name] == hashlib.sha256(data).hexdigest()
    assert "hf_secret" not in json.dumps([ref.__dict__, str(path), hashes], default=str)


def test_hub_model_missing_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="not in the local Hugging Face cache"):
        resolve_hub(parse_source("acme/absent"), HashCache(tmp_path / "h.json"), tmp_path / "m", offline=True)


def test_local_dir_digest_follows_content(tmp_path):
    d = tmp_path / "my-llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (d / "tokenizer.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"x")
    cache = HashCache(tmp_path / "h.json")
    ref1, _, _ = resolve_local(parse_source(str(d)), cache, tmp_path / "models")
    assert ref1.name == "my-llama" and ref1.revision == f"local-{ref1.digest[:7]}"
    (d / "model.safetensors").write_bytes(b"y")
    ref2, _, _ = resolve_local(parse_source(str(d)), cache, tmp_path / "models")
    assert ref2.digest != ref1.digest


def test_local_dir_without_weights_is_refused(tmp_path):
    d = tmp_path / "empty-model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "tokenizer.model").write_bytes(b"sp")
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        resolve_local(parse_source(str(d)), HashCache(tmp_path / "h.json"), tmp_path / "models")


def _snapshot_dir(tmp_path):
    """A hub cache snapshot used directly as a local model directory (--model ~/.cache/.../snapshots/<sha>)."""
    files = make_hub_cache(tmp_path / "hub")
    return tmp_path / "hub" / "models--acme--tiny-thing" / "snapshots" / SHA, files


def test_a_local_hub_snapshot_is_staged_without_symlinks(tmp_path):
    snap, files = _snapshot_dir(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    for name, data in files.items():
        (plain / name).write_bytes(data)
    cache = HashCache(tmp_path / "h.json")
    ref, path, hashes = resolve_local(parse_source(str(snap)), cache, tmp_path / "models")
    assert path.parent == tmp_path / "models" and path.name == f"{ref.name}@local-{ref.digest[:16]}"
    assert not any(p.is_symlink() for p in path.rglob("*"))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files
    # the same content as a plain directory: the same snapshot digest; a plain one is used where it is
    ref_plain, path_plain, hashes_plain = resolve_local(parse_source(str(plain)), cache, tmp_path / "models")
    assert (ref_plain.digest, hashes_plain) == (ref.digest, hashes) and path_plain == plain
    # a damaged staging (not the files the plan hashed) is redone, never mounted
    (path / "tokenizer.json").unlink()
    (path / "tokenizer.json").write_bytes(b"tampered")
    _, again, _ = resolve_local(parse_source(str(snap)), cache, tmp_path / "models")
    assert again == path and (path / "tokenizer.json").read_bytes() == files["tokenizer.json"]


@pytest.mark.docker
@pytest.mark.fresh_store  # needs no seeded models
def test_a_staged_hub_snapshot_reads_in_a_container(tmp_path, docker_engine):
    """The real container path: the snapshot's own links (../../blobs) dangle once mounted; the staged copy
    reads in a node container."""
    from builders import images, matrix
    from helpers import ROOT, readable_by_nodes

    snap, files = _snapshot_dir(tmp_path)
    _, path, _ = resolve_local(parse_source(str(snap)), HashCache(tmp_path / "h.json"), tmp_path / "models")
    readable_by_nodes(tmp_path)
    tag = images.image_tag("base", matrix.load(ROOT / "matrix.yaml").images)

    def cat(d):
        c = docker_engine.containers.run(tag, ["sh", "-c", "cat /in/model/config.json || echo DANGLING"],
                                         volumes={str(d): {"bind": "/in/model", "mode": "ro"}}, user="65532",
                                         network_disabled=True, detach=True)
        try:
            assert c.wait(timeout=120)["StatusCode"] == 0
            return c.logs(stdout=True, stderr=False).decode()
        finally:
            c.remove(force=True)

    assert "DANGLING" in cat(snap)
    assert cat(path).strip() == files["config.json"].decode()
