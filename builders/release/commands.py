"""What `invoke release` calls: make a release from a store, or rebuild one and compare (`--check`)."""

from __future__ import annotations

import sys
from pathlib import Path

from builders.cli import guarded, make_console
from builders.release import ReleaseError
from builders.release.parts import GITHUB_ASSET_LIMIT

console = make_console(stderr=True)


def _split(value: str | None) -> list[str]:
    return [p.strip() for p in (value or "").split(",") if p.strip()]


def _limit(value) -> int:
    try:
        limit = int(value) if value not in (None, "") else GITHUB_ASSET_LIMIT
    except (TypeError, ValueError):
        raise ReleaseError(f"--max-asset-bytes {value!r}: not a number of bytes; e.g. 2147483647") from None
    if limit < 1:
        raise ReleaseError(f"--max-asset-bytes {limit}: must be positive")
    return limit


@guarded
def release(out: str, dest: str, only: str | None, matrix: str, max_asset_bytes=None, check: bool = False,
            check_out: str | None = None, executor: str = "docker") -> None:
    if check:
        from builders.release.recheck import recheck

        result = recheck(Path(dest), Path(matrix), Path(check_out) if check_out else None, executor,
                         log=console.print, original_out=Path(out) if Path(out).is_dir() else None)
        for line in result.lines():
            print(line)
        sys.exit(0 if result.identical else 1)
    from builders.release.assemble import build_release

    rel = build_release(Path(out), Path(dest), _split(only), Path(matrix), _limit(max_asset_bytes))
    for a in rel.assets:
        parts = f"  ({len(a['parts'])} parts: {a['reassemble']})" if a.get("parts") else ""
        print(f"{a['sha256'][:12]}  {a['size']:>12}  {a['name']}{parts}")
    print(f"release {rel.dest}: {len(rel.cells)} cells, {len(rel.assets)} assets, SHA256SUMS, "
          "provenance.intoto.json, release.json, manifests/, run-record.json")
