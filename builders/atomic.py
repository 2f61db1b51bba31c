"""Directory replacement that readers never see half done."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_dir(new: Path, dest: Path, old: Path) -> None:
    """Put directory `new` at `dest`: a plain rename when dest is absent; otherwise dest is renamed to
    `old` first (same filesystem), new takes its place, and old is deleted. Each rename is atomic."""
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, dest)
