"""matrix.yaml -> validated Matrix; CLI filters -> the list of cells to build.

Everything is checked here, on the host, before any node runs: every error is one line naming
`matrix.yaml:<line>`, the field, the value and what to write instead (builders.errors.MatrixError).
Type rules: a list is not a mapping, a string is not a list (`backends: gguf` is refused, not read as
the letters g, g, u, f), a boolean is not a number. Every (backend, quant) a selected cell builds must
have verification thresholds: an unchecked artifact is an error, never a pass.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builders import backends
from builders.backends.base import Cell
from builders.container_limits import ContainerLimits, default_limits
from builders.container_limits import parse as parse_limits
from builders.errors import MatrixError, ModelError
from builders.models.source import ModelSource, parse_source
from builders.targets import TARGETS
from builders.yamlfile import LocatedYaml

SCHEMA = 1
TOP_KEYS = ("schema", "defaults", "models", "backends", "cells", "verify", "images", "containers")
DEFAULT_KEYS = ("models", "backends", "targets", "quants")
ROOT_IMAGE = "base"  # bootstrapped from Debian (builders/rootfs.py); every other image comes from it


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

    def where(self, *keys) -> str:
        """`matrix.yaml:<line>` of the deepest existing node along keys (file name only without YAML)."""
        return self.yaml.where(*keys) if self.yaml is not None else f"{self.path.name}:1"

    def options_where(self, cell_id: str, backend: str) -> str:
        """`matrix.yaml:<line>: <keys> (for <cell>)` of where a cell's options come from: the last cells glob
        matching it, else backends.<backend>.options."""
        last = None
        for pattern in self.cell_overrides:
            if fnmatch.fnmatchcase(cell_id, pattern):
                last = pattern
        keys = ("cells", last) if last else ("backends", backend, "options")
        return f"{self.where(*keys)}: {_dotted(keys)} (for {cell_id})"


# ---- small typed readers: every one names the line, the field and what to write --------------------

def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    if value is None:
        return "nothing"
    return f"the {type(value).__name__} {value!r}"


def _dotted(keys: tuple) -> str:
    return ".".join(map(str, keys))


def _fail(y: LocatedYaml, keys: tuple, msg: str) -> MatrixError:
    return MatrixError(f"{y.where(*keys)}: {_dotted(keys)}: {msg}")


def _expect(cond: bool, y: LocatedYaml, keys: tuple, msg: str) -> None:
    if not cond:
        raise _fail(y, keys, msg)


def _get(y: LocatedYaml, keys: tuple) -> Any:
    node: Any = y.data
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    return node


def _mapping(y: LocatedYaml, keys: tuple, example: str = "name: value") -> dict:
    node = _get(y, keys)
    if node is None:
        return {}
    _expect(isinstance(node, dict), y, keys, f"must be a mapping (`{example}` lines), got {kind_of(node)}")
    return node


def _str_list(y: LocatedYaml, keys: tuple, example: str) -> list[str] | None:
    node = _get(y, keys)
    if node is None:
        return None
    _expect(isinstance(node, list), y, keys, f"must be a list like [{example}], got {kind_of(node)}")
    for i, item in enumerate(node):
        _expect(isinstance(item, str) and item.strip() != "", y, keys + (i,),
                f"list items must be names, got {kind_of(item)}")
    return list(node)


def _name_key(y: LocatedYaml, keys: tuple, name: Any) -> str:
    _expect(isinstance(name, str), y, keys, f"the key must be a name, got {kind_of(name)}; quote it")
    return name


# ---- load -------------------------------------------------------------------------------------------

def load(path: Path | str) -> Matrix:
    path = Path(path)
    if path.is_dir():
        raise MatrixError(f"{path}: is a directory; pass --matrix PATH to a matrix.yaml file")
    if not path.is_file():
        raise MatrixError(f"{path}: matrix file not found; pass --matrix PATH or run from the project root")
    y = LocatedYaml(path)
    data = y.data
    if not isinstance(data, dict):
        raise MatrixError(f"{path.name}:1: the matrix must be a YAML mapping with keys {', '.join(TOP_KEYS)}, "
                          f"got {kind_of(data)}")
    for key in data:
        _expect(key in TOP_KEYS, y, (key,), f"unknown key; expected one of {', '.join(TOP_KEYS)}")
    schema = data.get("schema", SCHEMA)
    _expect(type(schema) is int and schema == SCHEMA, y, ("schema",), f"unsupported schema {schema!r}; use {SCHEMA}")

    models = _load_models(y, path)
    backend_options = _load_backends(y)
    cell_overrides = _load_cells(y)
    thresholds = _load_thresholds(y)
    images = _load_images(y)
    defaults = _load_defaults(y, models)
    return Matrix(path, defaults, models, backend_options, cell_overrides, thresholds, images, y,
                  containers=container_limits(y))


def container_limits(y: LocatedYaml) -> ContainerLimits:
    """The `containers:` key (memory/pids limits of node containers), validated; defaults from this machine."""
    return parse_limits(y.data.get("containers"), y.where)


def _load_models(y: LocatedYaml, path: Path) -> dict[str, ModelSource]:
    models = {}
    for name, entry in _mapping(y, ("models",), "NAME: {source: tiny:llama}").items():
        keys = ("models", name)
        _name_key(y, keys, name)
        _expect(isinstance(entry, dict) and "source" in entry, y, keys,
                f"needs a mapping with `source:` (tiny:ARCH, ORG/NAME hub id, or a local directory), "
                f"got {kind_of(entry)}")
        for k in entry:
            _expect(k in ("source", "revision"), y, keys + (k,), "unknown key; use source or revision")
        source, revision = entry["source"], entry.get("revision")
        _expect(isinstance(source, str) and source.strip() != "", y, keys + ("source",),
                f"must be a string (tiny:ARCH, ORG/NAME or a directory), got {kind_of(source)}")
        _expect(revision is None or isinstance(revision, str), y, keys + ("revision",),
                f"must be a string (branch, tag or commit sha), got {kind_of(revision)}; quote it")
        try:
            models[name] = parse_source(source, name=name, revision=revision, base=path.parent)
        except (MatrixError, ModelError) as e:
            raise type(e)(f"{y.where(*keys, 'source')}: {_dotted(keys + ('source',))}: {e}") from None
    return models


def _check_options(y: LocatedYaml, keys: tuple, backend: str, options: dict) -> None:
    """Each option alone (so the error names its own line), then all together (cross-field rules)."""
    b = backends.get(backend)
    for k, v in options.items():
        b.normalize_options({k: v}, f"{y.where(*keys, k)}: {_dotted(keys)}")
    b.normalize_options(options, f"{y.where(*keys)}: {_dotted(keys)}")


def _load_backends(y: LocatedYaml) -> dict[str, dict[str, Any]]:
    out = {}
    for name, entry in _mapping(y, ("backends",), "gguf: {options: {}}").items():
        keys = ("backends", name)
        _expect(name in backends.USER_BACKENDS, y, keys,
                f"unknown backend; choose from {', '.join(backends.USER_BACKENDS)}")
        entry = _mapping(y, keys, "options: {...}")
        for k in entry:
            _expect(k == "options", y, keys + (k,), "unknown key; backends.<name> has only `options:`")
        options = dict(_mapping(y, keys + ("options",), "option: value"))
        for k in options:
            _name_key(y, keys + ("options", k), k)
        _check_options(y, keys + ("options",), name, options)
        out[name] = options
    return out


def _load_cells(y: LocatedYaml) -> dict[str, dict[str, Any]]:
    out = {}
    for pattern, opts in _mapping(y, ("cells",), "'GLOB': {option: value}").items():
        keys = ("cells", pattern)
        _name_key(y, keys, pattern)
        _expect(isinstance(opts, dict), y, keys, f"must map option names to values, got {kind_of(opts)}")
        for k in opts:
            _name_key(y, keys + (k,), k)
        out[pattern] = dict(opts)
    return out


def _load_thresholds(y: LocatedYaml) -> dict[str, dict[str, dict[str, float]]]:
    from builders.verify.thresholds import THRESHOLD_KEYS

    for k in _mapping(y, ("verify",), "thresholds: {...}"):
        _expect(k == "thresholds", y, ("verify", k), "unknown key; verify has only `thresholds:`")
    out: dict = {}
    for bname, per_quant in _mapping(y, ("verify", "thresholds"), "BACKEND: {QUANT: {...}}").items():
        bkeys = ("verify", "thresholds", bname)
        _expect(bname in backends.USER_BACKENDS, y, bkeys,
                f"unknown backend; choose from {', '.join(backends.USER_BACKENDS)}")
        known = backends.get(bname).quants
        out[bname] = {}
        for quant, limits in _mapping(y, bkeys, "QUANT: {top1_min: 0.9}").items():
            keys = bkeys + (quant,)
            _expect(quant in known, y, keys, f"unknown {bname} quant; choose from {', '.join(known)}")
            _expect(isinstance(limits, dict) and limits, y, keys,
                    f"must map threshold names to numbers (e.g. {{top1_min: 0.9}}), got {kind_of(limits)}; "
                    "a quant without thresholds would ship unchecked")
            for tkey, value in limits.items():
                tk = keys + (tkey,)
                _expect(tkey in THRESHOLD_KEYS, y, tk, f"unknown threshold; choose from {', '.join(THRESHOLD_KEYS)}")
                _expect(isinstance(value, (int, float)) and not isinstance(value, bool), y, tk,
                        f"must be a number, got {kind_of(value)}")
                _expect(math.isfinite(value) and value >= 0, y, tk,
                        f"must be a finite number >= 0, got {value!r}")
                if tkey == "top1_min":
                    _expect(value <= 1, y, tk, f"is a fraction of tokens: must be in [0, 1], got {value!r}")
            out[bname][quant] = dict(limits)
    return out


def _load_images(y: LocatedYaml) -> dict[str, dict[str, Any]]:
    from builders import images as images_mod

    raw = _mapping(y, ("images",), "NAME: {pins}")
    out: dict[str, dict] = {}
    for name, pins in raw.items():
        keys = ("images", name)
        _name_key(y, keys, name)
        _expect(pins is None or isinstance(pins, dict), y, keys, f"must be a mapping of pins, got {kind_of(pins)}")
        _expect((images_mod.DOCKER_DIR / f"{name}.Dockerfile.j2").is_file(), y, keys,
                f"no template docker/{name}.Dockerfile.j2; use one of the images the project has templates for")
        out[name] = dict(pins or {})
    _expect(ROOT_IMAGE in out, y, ("images",), "needs a `base:` image entry (suite, mirror, pip pins)")
    for name, pins in out.items():
        if "from" not in pins:
            continue
        keys = ("images", name, "from")
        parent = pins["from"]
        _expect(name != ROOT_IMAGE, y, keys, "base is the root image (bootstrapped from Debian); remove `from:`")
        _expect(isinstance(parent, str), y, keys, f"must name another image, got {kind_of(parent)}")
        _expect(parent != name, y, keys, f"image '{name}' cannot come from itself; write `from: base`")
        _expect(parent in out, y, keys, f"no image '{parent}' under `images:`; choose from {', '.join(out)}")
    for name in out:  # cycles: follow each chain of `from:` until base
        chain = [name]
        while chain[-1] != ROOT_IMAGE:
            nxt = out[chain[-1]].get("from", ROOT_IMAGE)
            if nxt in chain:
                _expect(False, y, ("images", chain[-1], "from"),
                        f"cycle {' -> '.join(chain + [nxt])}; one of them must come `from: base`")
            chain.append(nxt)
    return out


def _load_defaults(y: LocatedYaml, models: dict[str, ModelSource]) -> dict[str, Any]:
    d = _mapping(y, ("defaults",), "models: [NAME]")
    for k in d:
        _expect(k in DEFAULT_KEYS, y, ("defaults", k), f"unknown key; expected one of {', '.join(DEFAULT_KEYS)}")
    out: dict[str, Any] = {}
    names = _str_list(y, ("defaults", "models"), "tiny-llama")
    for i, name in enumerate(names or []):
        _expect(name in models, y, ("defaults", "models", i), f"model '{name}' is not defined under `models:`")
    bnames = _str_list(y, ("defaults", "backends"), "gguf, mlc")
    for i, b in enumerate(bnames or []):
        _expect(b in backends.USER_BACKENDS, y, ("defaults", "backends", i),
                f"unknown backend '{b}'; choose from {', '.join(backends.USER_BACKENDS)}")
    tnames = _str_list(y, ("defaults", "targets"), "cpu, cuda")
    for i, t in enumerate(tnames or []):
        _expect(t in TARGETS, y, ("defaults", "targets", i), f"unknown target '{t}'; choose from {', '.join(TARGETS)}")
    quants = {}
    for b in _mapping(y, ("defaults", "quants"), "gguf: [F16, Q8_0]"):
        keys = ("defaults", "quants", b)
        _expect(b in backends.USER_BACKENDS, y, keys,
                f"unknown backend; choose from {', '.join(backends.USER_BACKENDS)}")
        known = backends.get(b).quants
        qs = _str_list(y, keys, ", ".join(list(known)[:2])) or []
        for i, q in enumerate(qs):
            _expect(q in known, y, keys + (i,), f"unknown {b} quant '{q}'; choose from {', '.join(known)}")
        quants[b] = qs
    for key, value in (("models", names), ("backends", bnames), ("targets", tnames), ("quants", quants or None)):
        if value is not None:
            out[key] = value
    return out


# ---- selection ----------------------------------------------------------------------------------------

def _split(value: str | list | None, option: str) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, list)):
        raise MatrixError(f"{option} {value!r}: give a comma-separated list of names")
    items = value if isinstance(value, list) else str(value).split(",")
    out = [s.strip() for s in items if str(s).strip()]
    if not out:
        raise MatrixError(f"{option} {value!r}: names no value; give a comma-separated list of names")
    return out


@dataclass
class Selection:
    cells: list[Cell]
    models: dict[str, ModelSource]  # name -> source of every model a cell uses


def all_cell_ids(model_names) -> list[str]:
    """Every cell id the matrix can name for these models (unsupported targets included)."""
    return [f"{m}.{b}.{q}.{t}" for m in model_names for b in backends.USER_BACKENDS
            for q in backends.get(b).quants for t in TARGETS]


def select(m: Matrix, model: str | None = None, backends_: str | None = None, quants: str | None = None,
           targets: str | None = None, only: str | None = None) -> Selection:
    """Expand the matrix under the CLI filters into cells (model x backend x quant x target), then check
    what the matrix says about them: `cells:` globs, option overrides, thresholds."""
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise MatrixError(f"--model {model!r}: give a model name from matrix.yaml, tiny:ARCH, ORG/NAME or a directory")
    if model:
        if model in m.models:
            models = {model: m.models[model]}
        else:
            src = parse_source(model, base=Path.cwd())
            models = {src.name: src}
    else:
        names = m.defaults.get("models") or list(m.models)
        models = {n: m.models[n] for n in names}
    if not models:
        raise MatrixError(f"{m.where('models')}: the matrix defines no model; add one under `models:` or pass --model")

    bnames = _split(backends_, "--backends") or list(m.defaults.get("backends") or backends.USER_BACKENDS)
    for b in bnames:
        if b not in backends.USER_BACKENDS:
            raise MatrixError(f"--backends: unknown backend '{b}'; choose from {', '.join(backends.USER_BACKENDS)}")

    tnames = _split(targets, "--targets") or list(m.defaults.get("targets") or ["cpu"])
    for t in tnames:
        if t not in TARGETS:
            raise MatrixError(f"--targets: unknown target '{t}'; choose from {', '.join(TARGETS)}")

    asked_quants = _split(quants, "--quants")
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
    patterns = _split(only, "--only")
    if patterns:
        for p in patterns:
            if not any(fnmatch.fnmatchcase(c.id, p) for c in cells):
                raise MatrixError(f"--only {p}: matches no cell of this selection; run `invoke plan` to list cell ids")
        cells = [c for c in cells if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]
    if not cells:
        raise MatrixError("the selection is empty; nothing was built and index.json is left as it was - "
                          "widen --backends/--quants/--targets")
    if not any(c.target in backends.get(c.backend).targets for c in cells):
        pairs = sorted({f"{c.backend} on {c.target}" for c in cells})
        raise MatrixError(f"the selection is empty: no backend builds for its targets ({', '.join(pairs)} are "
                          "unsupported - see `invoke plan`); nothing was built and index.json is left as it was - "
                          "choose targets the backends support")
    _check_cell_globs(m, set(m.models) | set(models))
    _check_cell_options(m, cells)
    _check_thresholds(m, cells)
    used = {c.model for c in cells}
    return Selection(cells, {n: s for n, s in models.items() if n in used})


def _check_cell_globs(m: Matrix, model_names: set[str]) -> None:
    universe = all_cell_ids(sorted(model_names))
    for pattern in m.cell_overrides:
        if not any(fnmatch.fnmatchcase(cid, pattern) for cid in universe):
            raise MatrixError(f"{m.where('cells', pattern)}: cells.{pattern}: matches no cell of the matrix "
                              f"(cell ids are MODEL.BACKEND.QUANT.TARGET, e.g. {universe[0]}); fix the glob")


def _check_cell_options(m: Matrix, cells: list[Cell]) -> None:
    """The overrides of each selected cell, checked by its backend with the line of the glob they come from."""
    for c in cells:
        b = backends.get(c.backend)
        for pattern, override in m.cell_overrides.items():
            if fnmatch.fnmatchcase(c.id, pattern):
                for k, v in override.items():
                    b.normalize_options({k: v}, f"{m.where('cells', pattern, k)}: cells.{pattern} (for {c.id})")
        b.normalize_options(c.options, m.options_where(c.id, c.backend))


def _check_thresholds(m: Matrix, cells: list[Cell]) -> None:
    """Fail closed: a cell that builds an artifact needs thresholds for its (backend, quant)."""
    for c in cells:
        if c.target not in backends.get(c.backend).targets:
            continue  # listed as unsupported: nothing is built, nothing to check
        if m.thresholds_for(c.backend, c.quant):
            continue
        keys = ("verify", "thresholds", c.backend) if c.backend in m.thresholds else ("verify",)
        if m.yaml is None or _get(m.yaml, keys[:1]) is None:
            where = f"{m.path.name}:1"
        else:
            where = m.where(*keys)
        raise MatrixError(f"{where}: verify.thresholds.{c.backend} has no entry for quant {c.quant} (cell {c.id}); "
                          f"add `{c.quant}: {{top1_min: ...}}` there - an artifact is never promoted unchecked")
