"""Read a YAML file keeping line numbers, so errors can say `matrix.yaml:12: ...`.

The file is composed once into a node tree (for line numbers) and constructed from that tree with a
safe loader that refuses duplicate mapping keys: plain YAML lets the last one win silently, which
turns a copy-pasted `tiny-llama:` entry into another model without a word.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from builders.errors import MatrixError


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a key that appears twice (both lines in the error)."""

    path_name = "matrix.yaml"

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable key: let the base class give its own error
                    continue
                line = key_node.start_mark.line + 1
                if first is not None:
                    raise MatrixError(f"{self.path_name}:{line}: duplicate key '{key}' (first at line {first}); "
                                      "YAML keeps only the last one: remove or rename one of them")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


class LocatedYaml:
    def __init__(self, path: Path):
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise MatrixError(f"{path}: not UTF-8 text (byte {e.start}); save the matrix file as UTF-8") from None
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
            loader = _UniqueKeyLoader("")
            loader.path_name = path.name
            try:
                self.data = loader.construct_document(self.root) if self.root is not None else None
            finally:
                loader.dispose()
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise MatrixError(f"{where}: invalid YAML ({problem}); fix the syntax at that line") from None

    def line(self, *keys) -> int:
        """Line of the deepest existing node along `keys` (mapping keys or list indices)."""
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
        return line

    def where(self, *keys) -> str:
        """`file:line` of the deepest existing node along `keys`."""
        return f"{self.path.name}:{self.line(*keys)}"
