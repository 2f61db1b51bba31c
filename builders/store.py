"""The versioned artifact store: staging, checked cache hits and imports, atomic promotion, published
copies, index.json.

    <root>/.store/<digest>/{out/, manifest.json, log.txt}   promoted nodes; files read-only (0444)
    <root>/.staging/<digest>/{out/, work/, spec.json, result.json, log.txt}
                                                            a node while it runs; kept after a failure so
                                                            the rerun resumes; `work/` is kept after success
    <root>/.quarantine/<digest>.<n>/                        entries that failed their check, moved aside
                                                            with problem.txt (never deleted silently)
    <root>/.cache/file-sha256.json                          hash cache (builders/hashcache.py)
    <root>/.lock                                            held by the build using this root (lock.py)
    <root>/<model>/<rev7>/<publish>/<file>                  copies of store files, named as upstream does
    <root>/index.json                                       every artifact of the last build (a cell that
                                                            failed in it keeps its earlier entry, marked)

A node counts as cached only when its entry passes `check`: manifest.json lists at least one output and
out/ holds exactly the listed files with the listed size and sha256 (hash cache: a no-op build reads
no settled file). An entry of another root (`cache_from`) is re-hashed in full against that root's
manifest while it is copied - never linked - into this one. Published files are copies, so editing
one cannot reach the store, and one that differs from its manifest is copied again.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builders.atomic import swap_dir
from builders.errors import StoreError
from builders.hashcache import HashCache, copy_hashed
from builders.outputs import files_of, list_outputs  # noqa: F401  (list_outputs is part of the store API)

CACHE_FROM_ENV = "BUILDMATRIX_CACHE_FROM"
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH  # 0444
PUBLISHED = READ_ONLY | stat.S_IWUSR  # 0644


@dataclass(frozen=True)
class Lookup:
    """What the store holds for a digest, found without writing anything.

    status   "cached"  this root's entry passed its check
             "damaged" this root has an entry that failed it (`problem`); it must be moved aside
             "import"  no usable entry here, but a cache_from root has one (`source`; checked on import)
             "absent"  nothing anywhere: the node must run
    """

    status: str
    problem: str | None = None
    source: Path | None = None


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _safe_rel(rel) -> bool:
    p = PurePosixPath(str(rel))
    return bool(str(rel)) and not p.is_absolute() and ".." not in p.parts


class Store:
    """The content store under `root`. `cache_from` names other output roots whose promoted nodes are
    imported (checked, then copied) on a digest match - CI caches, a colleague's dist/, the test seed."""

    def __init__(self, root: Path, cache_from: list[Path] | None = None):
        self.root = Path(root).resolve()
        if cache_from is None:
            cache_from = [Path(p) for p in os.environ.get(CACHE_FROM_ENV, "").split(os.pathsep) if p]
        self.cache_from = [Path(p).resolve() for p in cache_from if Path(p).resolve() != self.root]
        self._hashes: HashCache | None = None

    # -- paths ------------------------------------------------------------------------------------
    def node_dir(self, digest: str) -> Path:
        return self.root / ".store" / digest

    def out_dir(self, digest: str) -> Path:
        return self.node_dir(digest) / "out"

    def staging_dir(self, digest: str) -> Path:
        return self.root / ".staging" / digest

    @property
    def hashes(self) -> HashCache:
        if self._hashes is None:
            self._hashes = HashCache(self.root / ".cache" / "file-sha256.json")
        return self._hashes

    def save_hashes(self) -> None:
        with self._fs("write the hash cache", self.root / ".cache"):
            self.hashes.save()

    @contextmanager
    def _fs(self, what: str, path: Path):
        """OSError -> one-line StoreError naming the path and what to do."""
        try:
            yield
        except OSError as e:
            where = e.filename or path
            raise StoreError(f"{where}: cannot {what} ({e.strerror or e}); free disk space or fix the "
                             f"permissions under {self.root}, then rerun") from None

    # -- checks -----------------------------------------------------------------------------------
    def check(self, node_dir: Path, manifest: dict | None = None, content: bool = True) -> str | None:
        """One-line problem of a promoted entry (manifest vs out/), or None when it is intact; content=False
        checks names and sizes only (the caller hashes the bytes itself)."""
        if manifest is None:
            try:
                manifest = json.loads((node_dir / "manifest.json").read_text())
            except FileNotFoundError:
                return "manifest.json is missing"
            except (OSError, ValueError) as e:
                return f"manifest.json is unreadable ({e})"
        outputs = manifest.get("outputs") if isinstance(manifest, dict) else None
        if not isinstance(outputs, list) or not outputs:
            return "manifest.json lists no outputs"
        listed = {}
        for o in outputs:
            if not isinstance(o, dict) or not _safe_rel(o.get("path")):
                return f"manifest.json has a bad output entry {o!r}"
            listed[o["path"]] = o
        out = node_dir / "out"
        try:
            on_disk = {f.relative_to(out).as_posix() for f in files_of(out)} if out.is_dir() else set()
        except ValueError as e:
            return str(e)
        unlisted = sorted(on_disk - set(listed))
        if unlisted:
            return f"out/{unlisted[0]} is not listed in manifest.json"
        for rel, o in sorted(listed.items()):
            f = out / rel
            if rel not in on_disk:
                return f"out/{rel} is missing"
            size = f.stat().st_size
            if size != o.get("size"):
                return f"out/{rel} has {size} bytes, manifest.json says {o.get('size')}"
            sha = self.hashes.sha256(f) if content else o.get("sha256")
            if sha != o.get("sha256"):
                return f"out/{rel} sha256 {sha[:12]}.. differs from manifest.json ({str(o.get('sha256'))[:12]}..)"
        return None

    def lookup(self, digest: str) -> Lookup:
        """Cache state of a digest; reads (and hashes) but never changes the store."""
        d = self.node_dir(digest)
        problem = None
        with self._fs("read the store entry", d):
            if d.exists():
                problem = self.check(d)
                if problem is None:
                    return Lookup("cached")
            source = next((o for o in self.cache_from if (o / ".store" / digest / "manifest.json").is_file()), None)
        if problem:
            return Lookup("damaged", problem, source)
        return Lookup("import", None, source) if source else Lookup("absent")

    def has(self, digest: str) -> bool:
        return self.lookup(digest).status == "cached"

    def manifest(self, digest: str) -> dict:
        path = self.node_dir(digest) / "manifest.json"
        with self._fs("read the manifest", path):
            return json.loads(path.read_text())

    # -- moving entries ---------------------------------------------------------------------------
    def set_aside(self, digest: str, problem: str) -> Path:
        """Move a damaged entry to .quarantine/<digest>.<n>/ with problem.txt; returns where it went."""
        q = self.root / ".quarantine"
        with self._fs("move a damaged store entry aside", self.node_dir(digest)):
            q.mkdir(parents=True, exist_ok=True)
            n = 1
            while (q / f"{digest}.{n}").exists():
                n += 1
            dest = q / f"{digest}.{n}"
            os.replace(self.node_dir(digest), dest)
            (dest / "problem.txt").write_text(problem + "\n")
        return dest

    def _seal(self, node_dir: Path) -> None:
        """Store files read-only (directories stay writable so an entry can be moved aside or replaced)."""
        for f in node_dir.rglob("*"):
            if f.is_file() and not f.is_symlink():
                os.chmod(f, READ_ONLY)

    def import_node(self, digest: str) -> tuple[Path | None, list[str]]:
        """Copy an entry of a cache_from root into this store, re-hashing every file against that root's
        manifest. Returns (root imported from or None, one line per refused root)."""
        refused = []
        for other in self.cache_from:
            src = other / ".store" / digest
            if not (src / "manifest.json").is_file():
                continue
            tmp = self.root / ".store" / f".incoming-{digest}"
            with self._fs("import a store entry", tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                (tmp / "out").mkdir(parents=True)
                problem = self._copy_checked(src, tmp)
                if problem:
                    shutil.rmtree(tmp, ignore_errors=True)
                    refused.append(f"{src}: {problem}")
                    continue
                self._seal(tmp)
                if self.node_dir(digest).exists():
                    self.set_aside(digest, f"replaced by an import from {other}")
                os.replace(tmp, self.node_dir(digest))
                self._remember_entry(digest)
            return other, refused
        return None, refused

    def _copy_checked(self, src: Path, dest: Path) -> str | None:
        try:
            manifest = json.loads((src / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            return f"manifest.json is unreadable ({e})"
        problem = self.check(src, manifest, content=False)  # exactly the listed files, listed sizes
        if problem:
            return problem
        for o in manifest["outputs"]:  # every byte re-hashed as it is copied: nothing of that root is trusted
            target = dest / "out" / o["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            sha, size = copy_hashed(src / "out" / o["path"], target)
            if (sha, size) != (o["sha256"], o["size"]):
                return f"out/{o['path']} sha256 {sha[:12]}.. differs from its manifest.json ({o['sha256'][:12]}..)"
        shutil.copyfile(src / "manifest.json", dest / "manifest.json")
        if (src / "log.txt").is_file():
            shutil.copyfile(src / "log.txt", dest / "log.txt")
        return None

    def _remember_entry(self, digest: str) -> None:
        """After a rename or chmod (which change ctime) record the sha256s just verified or computed."""
        out = self.out_dir(digest)
        for o in self.manifest(digest)["outputs"]:
            self.hashes.remember(out / o["path"], o["sha256"])

    def staging(self, digest: str, reuse_store: bool = False) -> Path:
        """The node's staging dir. With reuse_store (a rerun of some steps of a built node), the stored
        outputs are copied back so the selected steps find the earlier steps' files."""
        d = self.staging_dir(digest)
        with self._fs("prepare the staging dir", d):
            (d / "out").mkdir(parents=True, exist_ok=True)
            (d / "work").mkdir(parents=True, exist_ok=True)
            if reuse_store and self.has(digest) and not any((d / "out").iterdir()):
                shutil.rmtree(d / "out")
                shutil.copytree(self.out_dir(digest), d / "out", copy_function=shutil.copyfile)
        return d

    def reset_staging(self, digest: str) -> None:
        d = self.staging_dir(digest)
        with self._fs("reset the staging dir", d):
            if d.exists():
                shutil.rmtree(d)

    def promote(self, digest: str, manifest: dict) -> Path:
        """Move staged outputs into the store atomically (rename on one filesystem), manifest last."""
        if not manifest.get("outputs"):
            raise ValueError(f"internal: promote {digest} with no outputs")
        stage = self.staging_dir(digest)
        final = self.node_dir(digest)
        tmp = self.root / ".store" / f".incoming-{digest}"
        with self._fs("promote into the store", final):
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            os.replace(stage / "out", tmp / "out")
            if (stage / "log.txt").exists():
                shutil.copyfile(stage / "log.txt", tmp / "log.txt")
            write_json_atomic(tmp / "manifest.json", manifest)
            self._seal(tmp)
            swap_dir(tmp, final, self.root / ".store" / f".old-{digest}")  # a re-promotion (--only/--restart) swaps
            (stage / "out").mkdir(exist_ok=True)
            self._remember_entry(digest)
        return final

    def publish(self, digest: str, rel_dir: str) -> list[Path]:
        """Copy the node's outputs to <root>/<rel_dir>/; a file already there is kept only when it is a
        separate file whose size and sha256 match the manifest. Returns the published paths."""
        dest_root = self.root / rel_dir
        out = self.out_dir(digest)
        published = []
        for o in self.manifest(digest)["outputs"]:
            src, dest = out / o["path"], dest_root / o["path"]
            with self._fs("publish", dest):
                if not self._published_ok(src, dest, o):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
                    tmp.unlink(missing_ok=True)
                    sha, size = copy_hashed(src, tmp)
                    if (sha, size) != (o["sha256"], o["size"]):
                        tmp.unlink()
                        raise StoreError(f"{src}: sha256 differs from its manifest while publishing; rerun the "
                                         "build (the entry will be checked and rebuilt)")
                    os.chmod(tmp, PUBLISHED)
                    os.replace(tmp, dest)
                    self.hashes.remember(dest, sha)
            published.append(dest)
        return published

    def _published_ok(self, src: Path, dest: Path, o: dict) -> bool:
        if dest.is_symlink() or not dest.is_file():
            return False
        st = dest.stat()
        if st.st_size != o["size"] or (st.st_ino, st.st_dev) == (src.stat().st_ino, src.stat().st_dev):
            return False  # a hardlink into the store (older layout) is replaced by a copy
        return self.hashes.sha256(dest) == o["sha256"]

    def previous_index(self) -> dict[str, dict]:
        """The entries of the index.json an earlier build wrote here, by cell ({} when none or unreadable)."""
        try:
            data = json.loads((self.root / "index.json").read_text())
        except (OSError, ValueError):
            return {}
        entries = data.get("artifacts") if isinstance(data, dict) and data.get("schema") == 1 else None
        return {e["cell"]: e for e in entries or [] if isinstance(e, dict) and isinstance(e.get("cell"), str)}

    def write_index(self, entries: list[dict]) -> Path:
        path = self.root / "index.json"
        with self._fs("write index.json", path):
            self.root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"schema": 1, "artifacts": entries})
        return path

