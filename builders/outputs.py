"""What a node's out/ dir holds: the listing a manifest records, the check against the outputs a node
kind declares (`NodeDef.outputs`), and the fingerprint the node runner keys its resumable state on.

A declared pattern is a glob matched (fnmatch) against the posix path of every file relative to out/;
each pattern must match at least one file. `*` also crosses '/', so "*.mlpackage/Manifest.json" finds
a package at any depth.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path

from builders.hashcache import HashCache, sha256_file


def files_of(out: Path) -> list[Path]:
    """Every regular file under out, sorted; a symlink (dangling or not) is refused."""
    files = []
    for f in sorted(Path(out).rglob("*")):
        if f.is_symlink():
            raise ValueError(f"node output {f} is a symlink; outputs must be plain files")
        if f.is_file():
            files.append(f)
    return files


def list_outputs(out: Path, cache: HashCache | None = None) -> list[dict]:
    out = Path(out)
    hashed = cache.sha256 if cache else sha256_file
    return [{"path": f.relative_to(out).as_posix(), "size": f.stat().st_size, "sha256": hashed(f)}
            for f in files_of(out)]


def missing_outputs(paths: list[str], patterns: tuple[str, ...]) -> list[str]:
    """The declared patterns no file path matches."""
    return [p for p in patterns if not any(fnmatch.fnmatchcase(path, p) for path in paths)]


def check_declared(listing: list[dict], patterns: tuple[str, ...], kind: str) -> str | None:
    """One-line reason the listing is not what a `kind` node must produce, else None."""
    if not listing:
        return f"the node produced no outputs (a {kind} node must write {', '.join(patterns) or 'files'})"
    if not patterns:
        return f"node kind {kind} declares no outputs; its backend's expand() must fill NodeDef.outputs"
    missing = missing_outputs([o["path"] for o in listing], patterns)
    if missing:
        found = ", ".join(o["path"] for o in listing[:6]) + (" ..." if len(listing) > 6 else "")
        return f"the node did not produce {', '.join(missing)} (declared outputs of {kind}); it wrote {found}"
    return None


def fingerprint(out: Path, cache: HashCache | None = None) -> str:
    """sha256 over (path, size, sha256) of every file in out: equal iff the dir holds the same files."""
    listing = list_outputs(out, cache) if Path(out).is_dir() else []
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
