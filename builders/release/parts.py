"""Write a stream as one release asset, or - past a size limit - as numbered parts.

Release hosts cap the size of one asset (GitHub: every file under 2 GiB). An asset bigger than the
limit is written as `<name>.part001`, `<name>.part002`, ... each at most the limit; `cat <name>.part* >
<name>` reassembles it (the zero-padded numbers sort in order). The sha256 of the whole stream is
computed while writing, so SHA256SUMS can list the reassembled file as well as every part.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

GITHUB_ASSET_LIMIT = 2 * 1024**3 - 1  # "each file included in a release must be under 2 GiB"
PART_DIGITS = 3


def part_name(name: str, number: int) -> str:
    return f"{name}.part{number:0{PART_DIGITS}d}"


def reassembly(name: str) -> str:
    return f"cat {name}.part* > {name}"


@dataclass
class Written:
    name: str
    size: int
    sha256: str
    parts: list[dict] = field(default_factory=list)  # [{name, size, sha256}] when split


class PartWriter:
    """A write-only binary file object (what tarfile and copyfileobj need) that rolls over into parts."""

    def __init__(self, directory: Path, name: str, limit: int):
        if limit < 1:
            raise ValueError("part size limit must be positive")
        self.dir, self.name, self.limit = Path(directory), name, limit
        self.total = hashlib.sha256()
        self.size = 0
        self._parts: list[dict] = []
        self._file = None
        self._part_hash = None
        self._part_size = 0

    def _next_part(self) -> None:
        self._close_part()
        self._file = open(self.dir / part_name(self.name, len(self._parts) + 1), "wb")
        self._part_hash, self._part_size = hashlib.sha256(), 0

    def _close_part(self) -> None:
        if self._file is not None:
            self._file.close()
            self._parts.append({"name": part_name(self.name, len(self._parts) + 1), "size": self._part_size,
                                "sha256": self._part_hash.hexdigest()})
            self._file = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.total.update(view)
        self.size += len(view)
        while len(view):
            if self._file is None or self._part_size == self.limit:
                self._next_part()
            take = view[: self.limit - self._part_size]
            self._file.write(take)
            self._part_hash.update(take)
            self._part_size += len(take)
            view = view[len(take):]
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> Written:
        """Finish: one part becomes `<name>` itself; several stay parts. Returns what was written."""
        if self._file is None and not self._parts:
            self._next_part()  # an empty asset is still one (empty) file
        self._close_part()
        sha = self.total.hexdigest()
        if len(self._parts) == 1:
            os.replace(self.dir / self._parts[0]["name"], self.dir / self.name)
            return Written(self.name, self.size, sha)
        return Written(self.name, self.size, sha, self._parts)
