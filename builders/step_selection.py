"""`--only-step` / `--restart-step` checked on the host against the selected cells' artifact nodes, before
anything runs (the node runner would otherwise find a bad value only inside the container, after images
were built and parents ran). Same rule as builders/node.py: a step name or its 1-based number."""

from __future__ import annotations

from builders import backends
from builders.errors import MatrixError


def step_names(backend: str, kind: str) -> list[str] | None:
    """The node kind's step names; None when its step module cannot be imported on this host (then the node
    runner checks the value inside the toolchain container, as before)."""
    try:
        steps = backends.get(backend).steps(kind)
    except ImportError:
        return None
    return [name for name, _ in steps]


def matches(names: list[str], value: str) -> bool:
    return value in names or (value.isdigit() and 1 <= int(value) <= len(names))


def check(plan, only_step, restart_step) -> None:
    """Raise MatrixError (one line) when a step value names no step of some selected artifact node."""
    asked = [(opt, str(v).strip()) for opt, v in (("--only-step", only_step), ("--restart-step", restart_step))
             if v not in (None, "")]
    if not asked:
        return
    if len(asked) == 2:
        raise MatrixError("--only-step and --restart-step were both given; pass one of them")
    option, value = asked[0]
    nodes = [(pc.cell.id, plan.nodes[pc.nodes[-1]].node) for pc in plan.cells if pc.nodes]
    if not nodes:
        raise MatrixError(f"{option} {value}: no selected cell has a node to run (all are unsupported); "
                          "select buildable cells with --only")
    for cell_id, nd in nodes:
        names = step_names(nd.backend, nd.kind)
        if names is not None and not matches(names, value):
            numbered = ", ".join(f"{i + 1}={s}" for i, s in enumerate(names))
            raise MatrixError(f"{option} {value}: no such step in {cell_id} ({nd.kind}: {numbered}); "
                              "pass one of those, or narrow the cells with --only")
