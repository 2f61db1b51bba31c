"""Where a Vulkan-capable TVM comes from: matrix.yaml `images.mlc-vulkan.tvm_source`, read by the plan (is the
vulkan cell built here, or on CI runners?) and by images.py (a local tarball is part of the build context).

    images:
      mlc-vulkan:
        tvm_source: {git: https://github.com/apache/tvm, commit: <40 hex>}      # cloned where there is network
        tvm_source: {tarball: /path/to/tvm-src.tar.gz, sha256: <64 hex>}        # a local source, built anywhere

The PyPI apache-tvm wheel has no Vulkan codegen, and TVM's compiler sources are in no package this project
reaches, so without a tarball the mlc-vulkan image builds only where GitHub is reachable: a CI runner
(GITHUB_ACTIONS=true). Plan-side safe: no tvm import.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from builders.errors import MatrixError

IMAGE = "mlc-vulkan"
TARBALL_NAME = "tvm-source.tar.gz"  # its name in the build context
FIELD = f"matrix.yaml images.{IMAGE}.tvm_source"


@dataclass(frozen=True)
class TvmSource:
    git: str | None = None
    commit: str | None = None
    tarball: Path | None = None
    sha256: str | None = None

    @property
    def local(self) -> bool:
        return self.tarball is not None


def source_of(images: dict) -> TvmSource | None:
    """The configured TVM source, None when there is none; a malformed one is a MatrixError naming the field."""
    raw = (images.get(IMAGE) or {}).get("tvm_source")
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"git", "commit", "tarball", "sha256"}:
        raise MatrixError(f"{FIELD}: must be {{git: URL, commit: 40-hex}} or {{tarball: PATH, sha256: 64-hex}}, "
                          f"got {raw!r}")
    if raw.get("tarball") is not None:
        path, sha = Path(str(raw["tarball"])).expanduser(), str(raw.get("sha256") or "")
        if not path.is_file():
            raise MatrixError(f"{FIELD}.tarball: {path} is not a file; give the path of a TVM source .tar.gz")
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise MatrixError(f"{FIELD}.sha256: {sha!r} is not a sha256; write the tarball's `sha256sum`")
        return TvmSource(tarball=path.resolve(), sha256=sha)
    git, commit = raw.get("git"), str(raw.get("commit") or "")
    if not isinstance(git, str) or not git:
        raise MatrixError(f"{FIELD}.git: a git URL is required (e.g. https://github.com/apache/tvm)")
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise MatrixError(f"{FIELD}.commit: {commit!r} is not a full 40-hex commit; pin the exact commit to build")
    return TvmSource(git=git, commit=commit)


def ci_runner_reason(images: dict, environ: dict | None = None) -> str | None:
    """Why a vulkan cell is built on CI runners rather than here, or None when it is built here."""
    env = os.environ if environ is None else environ
    src = source_of(images)
    if src is not None and src.local:
        return None
    if src is not None and env.get("GITHUB_ACTIONS") == "true":
        return None
    how = (f"TVM {src.commit[:12]} from {src.git} is cloned there" if src else
           f"set {FIELD} (git URL + commit, or a local tarball + sha256) for the job to build")
    return ("built on CI runners: needs a TVM built with USE_VULKAN=ON (the PyPI wheel has no Vulkan codegen) "
            f"in the {IMAGE} image; {how}")


def context_file(images: dict) -> Path | None:
    """The local tarball to put in the mlc-vulkan build context (part of the image tag), if any."""
    src = source_of(images)
    return src.tarball if src is not None and src.local else None
