"""A release's assets: one copy of each distinct artifact (by sha256), written deterministically.

A node with one output file ships that file under its own name (e.g. llama.cpp's
`<Model>-<Size>-<QUANT>.gguf`). A node with several files (MLC weights, Core ML packages) ships as
`<node key>.tar`: members sorted by path under a `<node key>/` directory, mtime = the build's
SOURCE_DATE_EPOCH, owner 0:0 with no names, modes 0644/0755 - so the same outputs give the same bytes.
Every file read from the store is hashed on the way and must match its manifest (a changed store file
is refused, never shipped).
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from builders.release import ReleaseError
from builders.release.collect import Collected
from builders.release.parts import PartWriter, Written

CHUNK = 1 << 20


@dataclass
class Asset:
    name: str
    kind: str  # file | tar
    node: str  # node key
    digest: str  # node digest
    written: Written | None = None


class _HashingReader:
    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def read(self, n=-1):
        data = self.f.read(n)
        self.h.update(data)
        return data


def _checked_copy(src: Path, dest, expected: str, where: str) -> None:
    try:
        with open(src, "rb") as f:
            reader = _HashingReader(f)
            shutil.copyfileobj(reader, dest, CHUNK)
    except FileNotFoundError:
        raise ReleaseError(f"{src}: listed in the manifest of {where} but missing from the store; "
                           "rebuild it with `invoke build`") from None
    if reader.h.hexdigest() != expected:
        raise ReleaseError(f"{src}: sha256 {reader.h.hexdigest()[:12]}... differs from the manifest of {where} "
                           f"({expected[:12]}...); the store was changed after the build - rebuild it")


def plan_assets(got: Collected) -> list[Asset]:
    """One Asset per shipped node, named; names are unique (a clash of two different nodes' files gets the
    node key as prefix). Identical bytes are merged later, by sha256, once they are written."""
    nodes = {}
    for cell in got.cells:
        for digest in cell.ships:
            nodes[digest] = got.manifest(digest)
    assets = []
    for digest, m in sorted(nodes.items(), key=lambda kv: kv[1]["node"]["key"]):
        outputs = m.get("outputs") or []
        key = m["node"]["key"]
        if not outputs:
            raise ReleaseError(f"node {key} ({digest[:12]}) has no outputs in its manifest; rebuild it")
        if len(outputs) == 1:
            assets.append(Asset(Path(outputs[0]["path"]).name, "file", key, digest))
        else:
            assets.append(Asset(f"{key}.tar", "tar", key, digest))
    names = [a.name for a in assets]
    for a in assets:
        if names.count(a.name) > 1:
            a.name = f"{a.node}--{a.name}"
    return assets


def _tarinfo(name: str, size: int, mode: int, mtime: int, is_dir: bool) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    ti.size = 0 if is_dir else size
    ti.mode = 0o755 if is_dir or mode & 0o111 else 0o644
    ti.mtime = mtime
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _write_tar(asset: Asset, m: dict, store_out: Path, sink: PartWriter) -> None:
    epoch = int(m.get("source_date_epoch") or 0)
    outputs = sorted(m["outputs"], key=lambda o: o["path"])
    dirs = sorted({p.as_posix() for o in outputs for p in Path(o["path"]).parents if p.as_posix() != "."})
    with tarfile.open(fileobj=sink, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_tarinfo(asset.node, 0, 0, epoch, True))
        for d in dirs:
            tar.addfile(_tarinfo(f"{asset.node}/{d}", 0, 0, epoch, True))
        for o in outputs:
            src = store_out / o["path"]
            mode = src.stat().st_mode if src.exists() else 0
            ti = _tarinfo(f"{asset.node}/{o['path']}", o["size"], mode, epoch, False)
            sink.write(ti.tobuf(tarfile.GNU_FORMAT, tar.encoding, tar.errors))  # header; body streamed below
            start = sink.tell()
            _checked_copy(src, sink, o["sha256"], asset.node)
            if sink.tell() - start != o["size"]:
                raise ReleaseError(f"{src}: size differs from the manifest of {asset.node}; rebuild it")
            pad = -o["size"] % tarfile.BLOCKSIZE
            sink.write(b"\0" * pad)
            tar.offset = sink.tell()


def write_asset(asset: Asset, got: Collected, dest: Path, limit: int) -> Written:
    m = got.manifest(asset.digest)
    store_out = got.out / ".store" / asset.digest / "out"
    sink = PartWriter(dest, asset.name, limit)
    try:
        if asset.kind == "file":
            o = m["outputs"][0]
            _checked_copy(store_out / o["path"], sink, o["sha256"], asset.node)
        else:
            _write_tar(asset, m, store_out, sink)
    finally:
        written = sink.close()
    asset.written = written
    return written


def write_assets(got: Collected, dest: Path, limit: int) -> tuple[list[Asset], dict[str, str]]:
    """Write every asset; drop a later one whose bytes equal an earlier one's. Returns the kept assets and
    node digest -> asset name (for the cells that point at a dropped duplicate)."""
    kept: dict[str, Asset] = {}
    by_node: dict[str, str] = {}
    for asset in plan_assets(got):
        w = write_asset(asset, got, dest, limit)
        if w.sha256 in kept:
            for f in [w.name] + [p["name"] for p in w.parts]:
                (dest / f).unlink(missing_ok=True)
            by_node[asset.digest] = kept[w.sha256].name
            continue
        kept[w.sha256] = asset
        by_node[asset.digest] = asset.name
    return sorted(kept.values(), key=lambda a: a.name), by_node
