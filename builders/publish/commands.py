"""What `invoke publish` calls: stage the Hub commit of a release; write it (--dry-run) or upload it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from builders.cli import guarded
from builders.publish import PublishError

TOKEN_ENV = "HF_TOKEN"


def _check_repo(repo: str | None) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not repo or "/" not in repo:
        raise PublishError(f"--repo {repo!r}: pass the Hub repository as ORG/NAME, e.g. my-org/tiny-llama-GGUF")
    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise PublishError(f"--repo {repo!r}: not a valid Hub repository id ({str(e).splitlines()[0]})") from None
    return repo


def _empty_dir(path: Path) -> Path:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise PublishError(f"--dry-run {path}: exists and is not an empty directory; pass a new directory")
    path.mkdir(parents=True, exist_ok=True)
    return path


@guarded
def publish(repo: str | None, release: str, dry_run: str | None, token: str | None, quantized_by: str,
            collection: str | None, private: bool) -> None:
    from builders.publish.commit import prepare, upload, write_dry_run

    repo = _check_repo(repo)
    token = token or os.environ.get(TOKEN_ENV)
    if dry_run is None and not token:
        raise PublishError(f"no Hub token: pass --token or set {TOKEN_ENV} to upload, or --dry-run DIR to write "
                           "the commit locally")
    if dry_run is not None:
        out = _empty_dir(Path(dry_run))
        try:
            commit = prepare(Path(release), repo, out / "files", quantized_by, collection, private)
            write_dry_run(commit, out)
        except BaseException:
            shutil.rmtree(out / "files", ignore_errors=True)
            raise
        ops = commit.calls[1]["operations"]
        print(f"dry run: {len(ops)} files, {sum(o['size'] for o in ops)} bytes for {repo} in {out} "
              "(files/, operations.json, card-metadata.json); nothing was uploaded")
        return
    with tempfile.TemporaryDirectory(prefix="buildmatrix-publish-") as tmp:
        commit = prepare(Path(release), repo, Path(tmp) / "files", quantized_by, collection, private)
        url = upload(commit, token)
    print(f"published {len(commit.operations)} files to {repo}: {url}")
