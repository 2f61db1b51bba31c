"""sha256 of files, remembered per path by what the filesystem says about the file.

An entry is (size, mtime_ns, inode, ctime_ns, sha256) under the file's absolute path; it is reused
only while all four stat fields are unchanged. ctime cannot be set by a user, so an edit that keeps
size and mtime (`cp -p`, `touch -r`) still misses. Timestamps are coarse (a kernel tick), so a file
changed within RACY_NS of being hashed could be edited again without any field changing: such a
"racy" hash is used once and not remembered (git's racy-clean rule). A warm plan or a no-op build
therefore re-reads nothing that settled, and never trusts a hash the stat fields cannot vouch for.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

CHUNK = 1 << 20
RACY_NS = 2_000_000_000


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def copy_hashed(src: Path, dst: Path) -> tuple[str, int]:
    """Copy src to dst (a new file) reading it once; returns (sha256, size) of the bytes copied."""
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for chunk in iter(lambda: fi.read(CHUNK), b""):
            h.update(chunk)
            fo.write(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


class HashCache:
    """Persistent path -> sha256 cache keyed by (size, mtime_ns, inode, ctime_ns); see the module doc."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        except (OSError, ValueError):
            data = {}  # a damaged cache only costs re-hashing
        self.data: dict[str, list] = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 5}
        self.dirty = False
        self.hashed_bytes = 0  # bytes read this session (what a benchmark or test can check)

    def sha256(self, f: Path) -> str:
        key = os.path.abspath(f)
        st = os.stat(key)
        stamp = _stamp(st)
        entry = self.data.get(key)
        if entry is not None and entry[:4] == stamp:
            return entry[4]
        sha = sha256_file(Path(key))
        self.hashed_bytes += st.st_size
        self.remember(Path(key), sha, st)
        return sha

    def remember(self, f: Path, sha: str, st: os.stat_result | None = None) -> None:
        """Record sha for f as it is now (after a copy we hashed ourselves); racy files are not recorded."""
        key = os.path.abspath(f)
        st = st or os.stat(key)
        if max(st.st_mtime_ns, st.st_ctime_ns) > time.time_ns() - RACY_NS:
            if self.data.pop(key, None) is not None:
                self.dirty = True
            return
        self.data[key] = _stamp(st) + [sha]
        self.dirty = True

    def save(self) -> None:
        """Write the cache if it changed, dropping entries of files that no longer exist."""
        if not self.dirty:
            return
        self.data = {k: v for k, v in self.data.items() if os.path.lexists(k)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.data, sort_keys=True))
        os.replace(tmp, self.path)
        self.dirty = False
