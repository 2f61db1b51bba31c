"""Every error kind and exit code of the project, in one place.

User-facing errors (`BuildmatrixError` and subclasses): each message is one line that names what is
wrong and how to fix it; the CLI turns it into that line on stderr and the class's `exit_code`.
A node that fails raises `NodeFailed` inside its step; a build with a failed cell exits `EXIT_FAILED`.
Code decides what to do by the class of an error, never by its message text.
"""

EXIT_OK = 0
EXIT_FAILED = 1  # a cell failed (its node's one-line reason is in the report)
EXIT_USAGE = 2  # bad input: a BuildmatrixError
EXIT_INTERRUPTED = 130  # Ctrl-C


class BuildmatrixError(Exception):
    """Bad input from the user (matrix file, CLI option, model directory)."""

    exit_code = EXIT_USAGE


class MatrixError(BuildmatrixError):
    """matrix.yaml or a CLI filter is invalid."""


class ModelError(BuildmatrixError):
    """A model cannot be resolved (missing dir, bad id, unsupported architecture)."""


class ToolchainError(BuildmatrixError):
    """A toolchain image cannot be built or no Docker engine is reachable."""


class NoDockerEngine(ToolchainError):
    """No Docker engine answers: no image can be built or run, so the whole build stops (not one image)."""


class NodeFailed(Exception):
    """Raised inside a node step: the node fails with this one-line reason (not a user input error)."""


class StoreError(BuildmatrixError):
    """An output root cannot be read or written (disk full, permissions), or another build holds it."""
