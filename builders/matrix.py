"""matrix.yaml -> validated Matrix; CLI filters -> the list of cells to build."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders import backends
from builders.backends.base import Cell
from builders.container_limits import ContainerLimits, default_limits
from builders.container_limits import parse as parse_limits
from builders.errors import MatrixError
from builders.models.source import ModelSource, parse_source
from builders.targets import TARGETS
from builders.yamlfile import LocatedYaml

SCHEMA = 1
TOP_KEYS = {"schema", "defaults", "models", "backends", "cells", "verify", "images", "containers"}


@dataclass
class Matrix:
    path: Path
    defaults: dict[str, Any]
    models: dict[str, ModelSource]
    backend_options: dict[str, dict[str, Any]]
    cell_overrides: dict[str, dict[str, Any]]
    thresholds: dict[str, dict[str, dict[str, float]]]
    images: dict[str, dict[str, Any]]
    yaml: LocatedYaml | None = field(default=None, repr=False)
    containers: ContainerLimits = field(default_factory=default_limits)  # node container limits (not in digests)

    def thresholds_for(self, backend: str, quant: str) -> dict[str, float]:
        return dict(self.thresholds.get(backend, {}).get(quant, {}))

    def options_for(self, cell_id: str, backend: str) -> dict[str, Any]:
        opts = dict(self.backend_options.get(backend, {}))
        for pattern, override in self.cell_overrides.items():
            if fnmatch.fnmatchcase(cell_id, pattern):
                opts.update(override)
        return opts


def _expect(cond: bool, y: LocatedYaml, keys: tuple, msg: str) -> None:
    if not cond:
        raise MatrixError(f"{y.where(*keys)}: {'.'.join(map(str, keys))}: {msg}")


def _mapping(y: LocatedYaml, keys: tuple) -> dict:
    node: Any = y.data
    for k in keys:
        node = (node or {}).get(k) if isinstance(node, dict) else None
    if node is None:
        return {}
    _expect(isinstance(node, dict), y, keys, f"must be a mapping, got {type(node).__name__}")
    return node


def load(path: Path | str) -> Matrix:
    path = Path(path)
    if not path.is_file():
        raise MatrixError(f"{path}: matrix file not found; pass --matrix PATH or run from the project root")
    y = LocatedYaml(path)
    data = y.data
    if not isinstance(data, dict):
        raise MatrixError(f"{path.name}:1: the matrix must be a YAML mapping with keys {', '.join(sorted(TOP_KEYS))}")
    for key in data:
        _expect(key in TOP_KEYS, y, (key,), f"unknown key; expected one of {', '.join(sorted(TOP_KEYS))}")
    _expect(data.get("schema", SCHEMA) == SCHEMA, y, ("schema",), f"unsupported schema {data.get('schema')!r}; use {SCHEMA}")

    models = {}
    for name, entry in _mapping(y, ("models",)).items():
        _expect(isinstance(entry, dict) and "source" in entry, y, ("models", name),
                "needs a mapping with `source:` (tiny:ARCH, ORG/NAME hub id, or a local directory)")
        for k in entry:
            _expect(k in ("source", "revision"), y, ("models", name, k), "unknown key; use source or revision")
        try:
            models[name] = parse_source(str(entry["source"]), name=str(name), revision=entry.get("revision"),
                                        base=path.parent)
        except MatrixError as e:
            raise MatrixError(f"{y.where('models', name, 'source')}: {e}") from None

    backend_options = {}
    for name, entry in _mapping(y, ("backends",)).items():
        _expect(name in backends.USER_BACKENDS, y, ("backends", name),
                f"unknown backend; choose from {', '.join(backends.USER_BACKENDS)}")
        backend_options[name] = dict(_mapping(y, ("backends", name, "options")))

    cell_overrides = {}
    for pattern, opts in _mapping(y, ("cells",)).items():
        _expect(isinstance(opts, dict), y, ("cells", pattern), "must map option names to values")
        cell_overrides[str(pattern)] = dict(opts)

    thresholds: dict = {}
    from builders.verify.metrics import THRESHOLD_KEYS

    for bname, per_quant in _mapping(y, ("verify", "thresholds")).items():
        _expect(bname in backends.USER_BACKENDS, y, ("verify", "thresholds", bname),
                f"unknown backend; choose from {', '.join(backends.USER_BACKENDS)}")
        for quant, limits in (per_quant or {}).items():
            keys = ("verify", "thresholds", bname, quant)
            _expect(isinstance(limits, dict), y, keys, "must map threshold names to numbers")
            for tkey, value in limits.items():
                _expect(tkey in THRESHOLD_KEYS, y, keys + (tkey,),
                        f"unknown threshold; choose from {', '.join(THRESHOLD_KEYS)}")
                _expect(isinstance(value, (int, float)) and not isinstance(value, bool), y, keys + (tkey,),
                        f"must be a number, got {value!r}")
        thresholds[bname] = {str(q): dict(v or {}) for q, v in per_quant.items()}

    images = {str(k): dict(v or {}) for k, v in _mapping(y, ("images",)).items()}
    _expect("base" in images, y, ("images",), "needs a `base:` image entry (suite, mirror, pip pins)")

    defaults = _mapping(y, ("defaults",))
    m = Matrix(path, defaults, models, backend_options, cell_overrides, thresholds, images, y,
               containers=container_limits(y))
    _validate_defaults(m, y)
    return m


def container_limits(y: LocatedYaml) -> ContainerLimits:
    """The `containers:` key (memory/pids limits of node containers), validated; defaults from this machine."""
    return parse_limits(y.data.get("containers"), y.where)


def _validate_defaults(m: Matrix, y: LocatedYaml) -> None:
    d = m.defaults
    for name in d.get("models", []):
        _expect(name in m.models, y, ("defaults", "models"), f"model '{name}' is not defined under `models:`")
    for b in d.get("backends", []):
        _expect(b in backends.USER_BACKENDS, y, ("defaults", "backends"),
                f"unknown backend '{b}'; choose from {', '.join(backends.USER_BACKENDS)}")
    for t in d.get("targets", []):
        _expect(t in TARGETS, y, ("defaults", "targets"), f"unknown target '{t}'; choose from {', '.join(TARGETS)}")
    for b, qs in (d.get("quants") or {}).items():
        _expect(b in backends.USER_BACKENDS, y, ("defaults", "quants", b), "unknown backend")
        known = backends.get(b).quants
        for q in qs:
            _expect(q in known, y, ("defaults", "quants", b), f"unknown {b} quant '{q}'; choose from {', '.join(known)}")


def _split(value: str | list | None) -> list[str] | None:
    if value is None or value == "":
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    return [s.strip() for s in items if s.strip()]


@dataclass
class Selection:
    cells: list[Cell]
    models: dict[str, ModelSource]  # name -> source of every model a cell uses


def select(m: Matrix, model: str | None = None, backends_: str | None = None, quants: str | None = None,
           targets: str | None = None, only: str | None = None) -> Selection:
    """Expand the matrix under the CLI filters into cells (model x backend x quant x target)."""
    if model:
        if model in m.models:
            models = {model: m.models[model]}
        else:
            src = parse_source(model, base=Path.cwd())
            models = {src.name: src}
    else:
        names = m.defaults.get("models") or list(m.models)
        models = {n: m.models[n] for n in names}

    bnames = _split(backends_) or list(m.defaults.get("backends") or backends.USER_BACKENDS)
    for b in bnames:
        if b not in backends.USER_BACKENDS:
            raise MatrixError(f"--backends: unknown backend '{b}'; choose from {', '.join(backends.USER_BACKENDS)}")

    tnames = _split(targets) or list(m.defaults.get("targets") or ["cpu"])
    for t in tnames:
        if t not in TARGETS:
            raise MatrixError(f"--targets: unknown target '{t}'; choose from {', '.join(TARGETS)}")

    asked_quants = _split(quants)
    per_backend: dict[str, list[str]] = {}
    for b in bnames:
        known = backends.get(b).quants
        if asked_quants:
            per_backend[b] = [q for q in asked_quants if q in known]
        else:
            per_backend[b] = list((m.defaults.get("quants") or {}).get(b) or list(known)[:1])
    for q in asked_quants or []:
        if not any(q in backends.get(b).quants for b in bnames):
            choices = "; ".join(f"{b}: {', '.join(backends.get(b).quants)}" for b in bnames)
            raise MatrixError(f"--quants: unknown quant '{q}' for backends {','.join(bnames)}; choose from {choices}")

    cells = []
    for mname in models:
        for b in bnames:
            for q in per_backend[b]:
                for t in tnames:
                    cell_id = f"{mname}.{b}.{q}.{t}"
                    cells.append(Cell(mname, b, q, t, m.options_for(cell_id, b)))
    patterns = _split(only)
    if patterns:
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]
        if not cells:
            raise MatrixError(f"--only {only}: matches no cell; run `invoke plan` to list cell ids")
    used = {c.model for c in cells}
    return Selection(cells, {n: s for n, s in models.items() if n in used})
