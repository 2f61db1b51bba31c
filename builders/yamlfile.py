"""Read a YAML file keeping line numbers, so errors can say `matrix.yaml:12: ...`."""

from __future__ import annotations

from pathlib import Path

import yaml

from builders.errors import MatrixError


class LocatedYaml:
    def __init__(self, path: Path):
        self.path = path
        text = path.read_text()
        try:
            self.root = yaml.compose(text)
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise MatrixError(f"{where}: invalid YAML ({problem}); fix the syntax at that line") from None

    def where(self, *keys) -> str:
        """`file:line` of the deepest existing node along `keys` (mapping keys or list indices)."""
        node, line = self.root, 1
        for key in keys:
            if node is None:
                break
            if node.start_mark is not None:
                line = node.start_mark.line + 1
            if isinstance(node, yaml.MappingNode):
                nxt = None
                for k, v in node.value:
                    if k.value == str(key):
                        line, nxt = k.start_mark.line + 1, v
                        break
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                break
        return f"{self.path.name}:{line}"
