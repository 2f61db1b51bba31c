"""Model sources: `tiny:ARCH` and `synthetic:CONFIG[@layers=N]` (generated here), `ORG/NAME` (Hugging Face
hub), or a local directory.

Parsing is pure; resolving (hashing files, downloading) lives in builders/models/resolve.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from builders.errors import MatrixError, ModelError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "tiny" | "synthetic" | "local" | "hub"
    name: str  # printable name used in cell ids and paths
    source: str  # as the user wrote it
    revision: str | None = None  # hub revision asked for (branch, tag or sha)
    path: Path | None = None  # local directory
    arch: str | None = None  # tiny architecture, or the synthetic spec (CONFIG[@overrides])


def _check_name(name: str, what: str) -> str:
    if not NAME_OK.match(name) or ".." in name:
        raise MatrixError(f"{what} '{name}' must be letters, digits, '.', '_' or '-' (no '..', no '/')")
    return name


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")  # a fast HF tokenizer or a SentencePiece model


def check_model_dir(path: Path, what: str) -> None:
    """The files every backend needs besides the weights: config.json and a tokenizer."""
    if not (path / "config.json").is_file():
        raise ModelError(f"{what} has no config.json; point --model at a Hugging Face model directory "
                         "(config.json + tokenizer + *.safetensors)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"{what} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); save it next to the weights "
                         "with tokenizer.save_pretrained(DIR)")


def parse_source(source: str, name: str | None = None, revision: str | None = None,
                 base: Path | None = None) -> ModelSource:
    source = source.strip()
    if source.startswith("tiny:"):
        from builders.models.tiny import known_archs

        arch = source[5:]
        if arch not in known_archs():
            raise ModelError(f"model '{source}': unknown tiny architecture '{arch}'; choose from "
                             + ", ".join(f"tiny:{a}" for a in known_archs()))
        return ModelSource("tiny", _check_name(name or f"tiny-{arch}", "model name"), source, arch=arch)
    if source.startswith("synthetic:"):
        from builders.models.synthetic import display_name

        spec = source[len("synthetic:"):]
        return ModelSource("synthetic", _check_name(name or display_name(spec), "model name"), source, arch=spec)
    looks_local = source.startswith((".", "/", "~")) or (base is not None and (base / source).exists())
    if looks_local:
        path = Path(source).expanduser()
        if not path.is_absolute() and base is not None:
            path = (base / path)
        path = path.resolve()
        if not path.is_dir():
            raise ModelError(f"model directory '{source}' does not exist; pass an existing directory with "
                             "config.json and *.safetensors, a hub id ORG/NAME, or tiny:llama")
        check_model_dir(path, f"model directory '{source}'")
        return ModelSource("local", _check_name(name or path.name, "model name"), source, path=path)
    if ".." in source or not HUB_ID.match(source):
        raise ModelError(f"model '{source}' is not a hub id ORG/NAME (letters, digits, '.', '_', '-'; no '..'), "
                         "an existing local directory, tiny:ARCH or synthetic:CONFIG")
    return ModelSource("hub", _check_name(name or source.split("/")[1], "model name"), source,
                       revision=revision or "main")
