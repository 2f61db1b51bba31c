"""Writing a .mlpackage byte-deterministically (save + normalize_package): used by the conversion
(convert.py) and by the palettizing child process (palettize.py), which must not import each other."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path


def save(mlmodel, path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    mlmodel.save(str(path))
    normalize_package(path)


def _det_uuid(text: str) -> str:
    return str(uuid.UUID(bytes=hashlib.sha256(text.encode()).digest()[:16])).upper()


CONVERSION_DATE_KEY = "com.github.apple.coremltools.conversion_date"
VERSION_KEY = "com.github.apple.coremltools.version"


def _build_date() -> str:
    import time

    return time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", "0"))))


def normalize_package(path: Path) -> None:
    """Make a saved .mlpackage byte-deterministic:
    - Manifest.json: coremltools names its items with fresh random UUIDs; each is replaced by a UUID
      derived from the item's path (same format), keys sorted;
    - model.mlmodel: the conversion date in the metadata is set to SOURCE_DATE_EPOCH's date, and the
      spec is re-serialized deterministically (sorted map keys)."""
    from coremltools.proto import Model_pb2

    model_file = path / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(model_file.read_bytes())
    meta = spec.description.metadata.userDefined
    kept = {k: v for k, v in meta.items() if k and k != CONVERSION_DATE_KEY}
    meta.clear()
    meta.update(kept)
    import coremltools as ct

    meta[VERSION_KEY] = ct.__version__
    meta[CONVERSION_DATE_KEY] = _build_date()
    model_file.write_bytes(spec.SerializeToString(deterministic=True))

    manifest = path / "Manifest.json"
    data = json.loads(manifest.read_text())
    renamed = {}
    for old, entry in data.get("itemInfoEntries", {}).items():
        new = _det_uuid(entry.get("path", old))
        renamed[new] = entry
        if data.get("rootModelIdentifier") == old:
            data["rootModelIdentifier"] = new
    data["itemInfoEntries"] = renamed
    manifest.write_text(json.dumps(data, indent=4, sort_keys=True) + "\n")
