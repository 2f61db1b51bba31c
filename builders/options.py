"""Backend options declared as data: one `Option` per name, an `OptionSet` per backend.

An option has a type, a default, what makes a value valid (`allowed` values, a `check` predicate, or a
`parse` function that normalizes and raises MatrixError itself) and a doc string. `OptionSet.normalize`
completes and checks a cell's options on the host at plan time: matrix.py calls it per key with the
`matrix.yaml:<line>` of that key, so every option error names its line. `OptionSet.table()` is the
README's option table (`invoke docs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from builders.errors import MatrixError


@dataclass(frozen=True)
class Option:
    name: str
    type: type | tuple[type, ...]
    default: Any
    doc: str  # one line for the README table
    what: str = ""  # what a valid value is, for the error ("a positive integer at most 512")
    allowed: tuple[Any, ...] | None = None  # the only valid values, if a closed set
    check: Callable[[Any], bool] | None = None  # validity beyond the type
    parse: Callable[[Any, str], Any] | None = None  # (value, "where: backend option name") -> normalized value
    aliases: tuple[str, ...] = ()

    def value(self, raw: Any, backend: str, where: str) -> Any:
        """The normalized value of `raw` (None = the default), or MatrixError naming `where`."""
        field = f"{where}: {backend} option {self.name}"
        if self.parse is not None:
            return self.parse(raw, field)
        if raw is None:
            return self.default
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        ok = isinstance(raw, types) and not (isinstance(raw, bool) and bool not in types)
        if ok and self.allowed is not None:
            ok = raw in self.allowed
        if ok and self.check is not None:
            ok = bool(self.check(raw))
        if not ok:
            raise MatrixError(f"{field}={raw!r} must be {self.describe()}")
        return raw

    def describe(self) -> str:
        if self.what:
            return self.what
        if self.allowed is not None:
            return "one of " + ", ".join(map(str, self.allowed))
        names = self.type if isinstance(self.type, tuple) else (self.type,)
        return "a " + " or ".join(t.__name__ for t in names)


class OptionSet:
    def __init__(self, backend: str, options: Iterable[Option]):
        self.backend = backend
        self.options = {o.name: o for o in options}
        self.aliases = {a: o.name for o in self.options.values() for a in o.aliases}

    def __iter__(self):
        return iter(self.options)

    def defaults(self) -> dict[str, Any]:
        return {name: o.default for name, o in self.options.items()}

    def normalize(self, values: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Defaults completed, aliases resolved, every value checked (MatrixError naming `where`)."""
        out = self.defaults()
        for key, raw in values.items():
            name = self.aliases.get(key, key)
            if name not in self.options:
                raise MatrixError(f"{where}: unknown {self.backend} option '{name}'; known: {', '.join(self.options)}")
            out[name] = self.options[name].value(raw, self.backend, where)
        return out

    def table(self) -> list[str]:
        """Markdown rows `| backend | option | default | valid values | what it does |`."""
        rows = []
        for o in self.options.values():
            alias = f" (alias {', '.join(f'`{a}`' for a in o.aliases)})" if o.aliases else ""
            default = json.dumps(o.default)
            rows.append(f"| {self.backend} | `{o.name}`{alias} | `{default}` | {o.describe()} | {o.doc} |")
        return rows
