"""SHA256SUMS in the format `sha256sum -c` reads: `<hex>  <name>` per line, sorted by name."""

from __future__ import annotations

from builders.hashcache import sha256_file

NAME = "SHA256SUMS"


sha256_of = sha256_file  # the store's own file hash (builders/hashcache.py)


def render(entries: dict[str, str]) -> str:
    """entries: relative name -> sha256. Names with a newline or backslash would need sha256sum's escaping;
    release names never have them, so they are refused rather than escaped."""
    lines = []
    for name in sorted(entries):
        if "\n" in name or "\\" in name:
            raise ValueError(f"release file name {name!r} cannot be listed in {NAME}")
        lines.append(f"{entries[name]}  {name}\n")
    return "".join(lines)


def parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        sha, sep, name = line.partition("  ")
        if not sep or len(sha) != 64:
            raise ValueError(f"{NAME}: malformed line {line!r}")
        out[name] = sha
    return out
