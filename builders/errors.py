"""User-facing errors: each message is one line that names what is wrong and how to fix it.

The CLI turns a BuildmatrixError into that line on stderr and exit code 2; anything else is a bug.
"""


class BuildmatrixError(Exception):
    """Bad input from the user (matrix file, CLI option, model directory)."""

    exit_code = 2


class MatrixError(BuildmatrixError):
    """matrix.yaml or a CLI filter is invalid."""


class ModelError(BuildmatrixError):
    """A model cannot be resolved (missing dir, bad id, unsupported architecture)."""


class ToolchainError(BuildmatrixError):
    """A toolchain image cannot be built or no Docker engine is reachable."""


class NodeFailed(Exception):
    """Raised inside a node step: the node fails with this one-line reason (not a user input error)."""


class StoreError(BuildmatrixError):
    """An output root cannot be read or written (disk full, permissions), or another build holds it."""
