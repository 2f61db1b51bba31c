"""Registry of backends: name -> module exposing `BACKEND`. Modules are imported lazily so that the
plan side never imports a heavy toolchain (tvm, coremltools, llama_cpp) - those are imported inside steps."""

from __future__ import annotations

import importlib

from builders.errors import MatrixError

REGISTRY: dict[str, str] = {
    "gguf": "builders.backends.gguf",
    "mlc": "builders.backends.mlc",
    "coreml": "builders.backends.coreml",
    # internal node families that are not user-selectable backends
    "model": "builders.models.nodes",
}
USER_BACKENDS = ("gguf", "mlc", "coreml")


def get(name: str):
    if name not in REGISTRY:
        raise MatrixError(f"unknown backend '{name}': choose from {', '.join(USER_BACKENDS)}")
    return importlib.import_module(REGISTRY[name]).BACKEND
