"""The versioned artifact store: staging, atomic promotion, human-facing links, index.json.

    <root>/.store/<digest>/{out/, manifest.json, log.txt}   promoted nodes; presence of manifest.json = cached
    <root>/.staging/<digest>/{out/, work/, spec.json, result.json, log.txt}
                                                            a node while it runs; kept after a failure so
                                                            the rerun resumes; `work/` is kept after success
    <root>/<model>/<rev7>/<publish>/<file>                  hardlinks to the store, named as upstream does
    <root>/index.json                                       every artifact of the last build
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from builders.models.resolve import sha256_file


def list_outputs(out: Path) -> list[dict]:
    files = []
    for f in sorted(out.rglob("*")):
        if f.is_file():
            files.append({"path": f.relative_to(out).as_posix(), "size": f.stat().st_size, "sha256": sha256_file(f)})
        elif f.is_symlink():
            raise ValueError(f"node output {f} is a dangling symlink")
    return files


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


CACHE_FROM_ENV = "BUILDMATRIX_CACHE_FROM"


def _copy_tree_linked(src: Path, dest: Path) -> None:
    """Copy a promoted node: hardlinks where possible (same filesystem), else copies."""
    shutil.copytree(src, dest, copy_function=_link_or_copy)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class Store:
    """The content store under `root`. `cache_from` names other output roots whose promoted nodes are
    imported (hardlinked) on a digest match - CI caches, a colleague's dist/, the test suite's seed."""

    def __init__(self, root: Path, cache_from: list[Path] | None = None):
        self.root = Path(root).resolve()
        if cache_from is None:
            cache_from = [Path(p) for p in os.environ.get(CACHE_FROM_ENV, "").split(os.pathsep) if p]
        self.cache_from = [Path(p).resolve() for p in cache_from if Path(p).resolve() != self.root]

    def node_dir(self, digest: str) -> Path:
        return self.root / ".store" / digest

    def out_dir(self, digest: str) -> Path:
        return self.node_dir(digest) / "out"

    def has(self, digest: str) -> bool:
        if (self.node_dir(digest) / "manifest.json").is_file():
            return True
        for other in self.cache_from:
            src = other / ".store" / digest
            if (src / "manifest.json").is_file():
                tmp = self.root / ".store" / f".incoming-{digest}"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.parent.mkdir(parents=True, exist_ok=True)
                _copy_tree_linked(src, tmp)
                os.replace(tmp, self.node_dir(digest))
                return True
        return False

    def manifest(self, digest: str) -> dict:
        return json.loads((self.node_dir(digest) / "manifest.json").read_text())

    def staging(self, digest: str, reuse_store: bool = False) -> Path:
        """The node's staging dir. With reuse_store (a rerun of some steps of a built node), the stored
        outputs are copied back so the selected steps find the earlier steps' files."""
        d = self.root / ".staging" / digest
        (d / "out").mkdir(parents=True, exist_ok=True)
        (d / "work").mkdir(parents=True, exist_ok=True)
        if reuse_store and self.has(digest) and not any((d / "out").iterdir()):
            shutil.rmtree(d / "out")
            shutil.copytree(self.out_dir(digest), d / "out")
        return d

    def promote(self, digest: str, manifest: dict) -> Path:
        """Move staged outputs into the store atomically (rename on one filesystem), manifest last."""
        stage = self.root / ".staging" / digest
        final = self.node_dir(digest)
        tmp = self.root / ".store" / f".incoming-{digest}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        os.replace(stage / "out", tmp / "out")
        if (stage / "log.txt").exists():
            shutil.copy2(stage / "log.txt", tmp / "log.txt")
        write_json_atomic(tmp / "manifest.json", manifest)
        if final.exists():  # re-promotion after `--only/--restart`: swap
            old = self.root / ".store" / f".old-{digest}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        (stage / "out").mkdir(exist_ok=True)
        return final

    def publish(self, digest: str, rel_dir: str) -> list[Path]:
        """Hardlink the node's outputs under <root>/<rel_dir>/ (replacing older links atomically)."""
        dest_root = self.root / rel_dir
        links = []
        out = self.out_dir(digest)
        for f in sorted(out.rglob("*")):
            if not f.is_file():
                continue
            dest = dest_root / f.relative_to(out)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.tmp")
            tmp.unlink(missing_ok=True)
            try:
                os.link(f, tmp)
            except OSError:
                shutil.copy2(f, tmp)
            os.replace(tmp, dest)
            links.append(dest)
        return links

    def write_index(self, entries: list[dict]) -> Path:
        path = self.root / "index.json"
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"schema": 1, "artifacts": entries})
        return path
