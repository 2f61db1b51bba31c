"""Which user a node container runs as, and handing its staging dir to that user and back.

A node never runs as root. When the build runs as a normal user, the node runs as that user and nothing
changes hands. When the build runs as root, the node runs as the unprivileged uid:gid 65532; its staging
dir (the one writable mount) is chowned to it for the run and back to the host user afterwards, and its
read-only inputs must be readable by a user that is neither their owner nor in their group.
"""

from __future__ import annotations

import os
from pathlib import Path

from builders.errors import ModelError

UNPRIVILEGED_ID = 65532  # uid and gid of nodes when the build runs as root ("nonroot" in distroless images)


def container_user() -> tuple[int, int]:
    """uid, gid a node container runs as: the host user's, never root."""
    if os.getuid() == 0:
        return UNPRIVILEGED_ID, UNPRIVILEGED_ID
    return os.getuid(), os.getgid()


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give root and everything below it (links themselves, not their targets) to uid:gid."""
    os.lchown(root, uid, gid)
    for parent, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(parent, name), uid, gid)


def unreadable_by_others(root: Path) -> Path | None:
    """The first file or directory under root (itself included) that a user other than its owner and group
    cannot read (directories: read and enter), or None."""
    root = Path(root)
    for parent, dirs, files in os.walk(root):
        for path, bits in [(Path(parent), 0o005)] + [(Path(parent) / f, 0o004) for f in files]:
            try:
                mode = os.stat(path).st_mode  # links: their target, as the container sees them
            except OSError:  # a dangling link: the node reports what it misses
                continue
            if mode & bits != bits:
                return path
    return None


def require_readable(paths: list[Path], uid: int) -> None:
    """Raise a one-line ModelError naming the first file under `paths` the node's uid could not read."""
    for host in paths:
        bad = unreadable_by_others(host)
        if bad:
            raise ModelError(f"{bad}: not readable by the node's uid {uid} (node containers never run as root); "
                             f"make it readable: chmod -R a+rX {host}")
