"""Resolve a local or hub model source to a snapshot directory with per-file sha256.

Hub models go through huggingface_hub (revision pinned to the commit sha it resolves to; the token
comes from HF_TOKEN or the CLI and is never written anywhere). The hub cache stores files as symlinks
into blobs/; a container cannot follow those, so the snapshot is materialized as a directory of
hardlinks (or copies across filesystems) to the resolved files. A local directory holding symlinks (a hub
cache snapshot given as --model, links into ../../blobs) is staged the same way under the store's .models/,
checked file by file against the hashes the plan took; the build mounts the staged copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from builders.backends.base import ModelRef
from builders.errors import ModelError
from builders.hashcache import HashCache, sha256_file  # noqa: F401  (re-exported)
from builders.models.source import ModelSource, check_model_dir

SKIP = {".git", ".gitattributes", ".cache"}


def file_hashes(root: Path, cache: HashCache) -> dict[str, str]:
    out = {}
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if rel.parts[0] in SKIP or not f.is_file():
            continue
        out[rel.as_posix()] = cache.sha256(f.resolve())
    return out


def check_links(root: Path, what: str) -> None:
    """Refuse a symlink inside the model directory that resolves outside it: only the directory is mounted
    into a build, and a link to /etc/shadow or ~/.ssh must not be hashed, mounted or copied. A hub cache
    snapshot (<repo>/snapshots/<sha>/) links its files into the repo's blobs/ directory: that stays allowed."""
    real_root = Path(os.path.realpath(root))
    allowed = [real_root]
    if real_root.parent.name == "snapshots":
        allowed.append(real_root.parent.parent / "blobs")
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into linked directories
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            if not p.is_symlink():
                continue
            real = Path(os.path.realpath(p))
            if not any(real == a or a in real.parents for a in allowed):
                raise ModelError(f"{what}: {p.relative_to(root).as_posix()} is a symlink to {real}, outside the "
                                 "model directory; copy that file into the directory instead of linking it")


def snapshot_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def read_config(path: Path, what: str) -> dict:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{what}: cannot read config.json ({e}); it must be a Hugging Face config file") from None
    archs = config.get("architectures") or []
    if not archs:
        raise ModelError(f"{what}: config.json has no `architectures`; add e.g. [\"LlamaForCausalLM\"]")
    return config


def has_links(root: Path) -> bool:
    return any(Path(d, n).is_symlink() for d, dirs, names in os.walk(root) for n in dirs + names)


def _staged(src_dir: Path, dest: Path, files: dict[str, str], cache: HashCache, what: str) -> Path:
    """`src_dir` materialized at dest (no symlinks), holding exactly `files`; a stale or damaged earlier
    staging is redone once, then a difference is an error."""
    for _ in range(2):
        _materialize(src_dir, dest)
        staged = file_hashes(dest, cache)
        if staged == files:
            return dest
        shutil.rmtree(dest)
    wrong = sorted(set(staged) ^ set(files)) or sorted(k for k in files if staged[k] != files[k])
    raise ModelError(f"{what}: its files changed while being staged into {dest} ({wrong[0]} differs); "
                     "leave the model directory alone during the build and rerun it")


def resolve_local(src: ModelSource, cache: HashCache, models_dir: Path) -> tuple[ModelRef, Path, dict]:
    """The snapshot of a local directory; `models_dir` (the store's .models/) receives a staged copy when the
    directory holds symlinks (a container cannot follow them out of its mount)."""
    what = f"model directory '{src.source}'"
    check_model_dir(src.path, what)
    check_links(src.path, what)
    files = file_hashes(src.path, cache)
    if not any(f.endswith(".safetensors") for f in files):
        raise ModelError(f"model directory '{src.source}' has no *.safetensors weights; save the model with "
                         "save_pretrained(safe_serialization=True)")
    config = read_config(src.path, f"model directory '{src.source}'")
    digest = snapshot_digest(files)
    ref = ModelRef(src.name, src.source, f"local-{digest[:7]}", digest, config, config["architectures"][0])
    path = src.path
    if has_links(src.path):
        path = _staged(src.path, Path(models_dir) / f"{src.name}@local-{digest[:16]}", files, cache, what)
    return ref, path, files


def _materialize(snapshot: Path, dest: Path) -> None:
    """The snapshot's files (symlinks resolved) as hardlinks to their targets, or copies across filesystems;
    no symlinks left. The caller has refused links out of the snapshot (check_links)."""
    if dest.is_dir():
        return
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in sorted(snapshot.rglob("*")):
        if f.relative_to(snapshot).parts[0] in SKIP or not f.is_file():
            continue
        target = tmp / f.relative_to(snapshot)
        target.parent.mkdir(parents=True, exist_ok=True)
        real = Path(os.path.realpath(f))
        try:
            os.link(real, target)
        except OSError:
            shutil.copy2(real, target)
    os.replace(tmp, dest)


def resolve_hub(src: ModelSource, cache: HashCache, models_dir: Path, token: str | None = None,
                offline: bool = False) -> tuple[ModelRef, Path, dict]:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    token = token or os.environ.get("HF_TOKEN") or None
    # huggingface_hub reads HF_HUB_CACHE/HF_HOME once, at import; read them at call time instead.
    cache_dir = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None)
    try:
        snap = Path(snapshot_download(src.source, revision=src.revision, token=token, cache_dir=cache_dir,
                                      local_files_only=offline or os.environ.get("HF_HUB_OFFLINE") == "1",
                                      allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]))
    except LocalEntryNotFoundError:
        raise ModelError(f"model '{src.source}' revision '{src.revision}' is not in the local Hugging Face cache "
                         "and the hub cannot be reached; download it once with network access or use a local "
                         "directory") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        raise ModelError(f"model '{src.source}': the hub answered HTTP {status}; check the id, the revision and "
                         "HF_TOKEN for gated models") from None
    sha = snap.name  # snapshots/<commit sha>
    dest = models_dir / f"{src.name}@{sha}"
    check_links(snap, f"hub snapshot {snap}")
    _materialize(snap, dest)
    check_model_dir(dest, f"model '{src.source}' (revision {sha})")
    files = file_hashes(dest, cache)
    config = read_config(dest, f"model '{src.source}'")
    ref = ModelRef(src.name, src.source, sha, snapshot_digest(files), config, config["architectures"][0])
    return ref, dest, files
