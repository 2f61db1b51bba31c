"""The Hub commit of a release: the files, the operations, and either a dry run or the real upload.

The repository gets README.md (the model card), every asset as users want it on the Hub (a single file
as it is, a split asset reassembled, a tar unpacked into its `<node key>/` directory) and the release's
own records under `buildmatrix/`. The same staged tree and the same huggingface_hub operation objects
serve both modes: `--dry-run DIR` writes them to DIR (files/ = the exact bytes, operations.json = the
calls in order, card-metadata.json = the card's front matter) and makes no network call; without it the
calls are made with the token (create_repo, create_commit, add_collection_item).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import CommitOperationAdd

from builders.publish import PublishError
from builders.publish.card import render
from builders.release import checksums
from builders.release.assemble import PROVENANCE, RUN_RECORD
from builders.release.read import MANIFESTS, RELEASE_JSON, load_release

RECORDS_DIR = "buildmatrix"


@dataclass
class Commit:
    repo: str
    files: Path  # staged tree, one file per path_in_repo
    operations: list[CommitOperationAdd]
    calls: list[dict]  # what would be (or was) called, in order, without secrets
    metadata: dict


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _stage_asset(release_dir: Path, a: dict, files: Path) -> None:
    if a.get("parts"):
        dst = files / a["name"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(dst, "wb") as out:
            for p in a["parts"]:
                with open(release_dir / p["name"], "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        src = dst
    else:
        src = release_dir / a["name"]
    if checksums.sha256_of(src) != a["sha256"]:
        raise PublishError(f"{release_dir / a['name']}: sha256 differs from release.json; make the release again")
    if a["kind"] == "file":
        if src != files / a["name"]:
            _link_or_copy(src, files / a["name"])
        return
    with tarfile.open(src) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or name.parts[0] != a["node"]:
                raise PublishError(f"{a['name']}: member {member.name} is outside {a['node']}/; make the release again")
            dst = files / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as f, open(dst, "wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)
    if src == files / a["name"]:
        src.unlink()  # the reassembled tar, unpacked


def prepare(release_dir: Path, repo: str, files: Path, quantized_by: str, collection: str | None,
            private: bool) -> Commit:
    """Stage the commit's files under `files` (must be empty) and build the operations."""
    rel, manifests = load_release(release_dir)
    files.mkdir(parents=True, exist_ok=True)
    for a in rel["assets"]:
        _stage_asset(release_dir, a, files)
    for name in (RELEASE_JSON, PROVENANCE, RUN_RECORD, checksums.NAME):
        _link_or_copy(release_dir / name, files / RECORDS_DIR / name)
    for p in sorted((release_dir / MANIFESTS).glob("*.json")):
        _link_or_copy(p, files / RECORDS_DIR / MANIFESTS / p.name)
    card, metadata = render(rel, manifests, repo, quantized_by)
    (files / "README.md").write_text(card)
    ops = [CommitOperationAdd(path_in_repo=p.relative_to(files).as_posix(), path_or_fileobj=str(p))
           for p in sorted(files.rglob("*")) if p.is_file()]
    cells = ", ".join(c["id"] for c in rel["cells"])
    calls = [
        {"call": "create_repo", "repo_id": repo, "repo_type": "model", "exist_ok": True, "private": private},
        {"call": "create_commit", "repo_id": repo, "repo_type": "model",
         "commit_message": f"buildmatrix release: {len(rel['cells'])} cells",
         "commit_description": f"Cells: {cells}. Provenance: {RECORDS_DIR}/{PROVENANCE}.",
         "operations": [{"type": "add", "path_in_repo": op.path_in_repo, "size": op.upload_info.size,
                         "sha256": op.upload_info.sha256.hex()} for op in ops]},
    ]
    if collection:
        calls.append({"call": "add_collection_item", "collection_slug": collection, "item_id": repo,
                      "item_type": "model", "exists_ok": True})
    return Commit(repo, files, ops, calls, metadata)


def write_dry_run(commit: Commit, out: Path) -> None:
    (out / "operations.json").write_text(json.dumps(commit.calls, indent=2) + "\n")
    (out / "card-metadata.json").write_text(json.dumps(commit.metadata, indent=2, sort_keys=True) + "\n")


def upload(commit: Commit, token: str) -> str:
    """The real thing (never run by the tests: no Hub here). Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    result = None
    for call in commit.calls:
        args = {k: v for k, v in call.items() if k != "call"}
        if call["call"] == "create_repo":
            api.create_repo(**args)
        elif call["call"] == "create_commit":
            args.pop("operations")
            result = api.create_commit(operations=commit.operations, **args)
        elif call["call"] == "add_collection_item":
            api.add_collection_item(**args)
    return str(getattr(result, "commit_url", ""))
