"""YAML as the configuration reads it: safe types only, and no key given twice.

PyYAML keeps the last of two equal keys and drops the first without a word, so a
second `lr:` (or a second whole `toy:` study) silently replaces the first. Here a
repeated key is an error naming its full key path and its line. Every problem with
the text (undecodable bytes, characters YAML refuses, bad syntax) is one line too.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from tdiag.config.errors import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a key given twice (YAML 1.2 requires unique keys).

    The check runs over the composed node tree before anything is constructed, so it
    knows each key's full path; `<<` merge keys are left to PyYAML, where later keys
    overriding merged ones is the point.
    """

    def construct_document(self, node: Node) -> Any:
        self._refuse_duplicates(node, [], set())
        return super().construct_document(node)

    def _refuse_duplicates(self, node: Node, path: list[str], seen: set[int]) -> None:
        if id(node) in seen:  # an alias of a node already checked (or a recursive one)
            return
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self._refuse_duplicates(item, path[:-1] + [f"{path[-1]}[{i}]"] if path else [f"[{i}]"], seen)
        elif isinstance(node, MappingNode):
            keys: set = set()
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:  # a mapping or list as a key: the schema refuses it by name
                    continue
                where = path + [str(key)]
                if key in keys:
                    raise DuplicateKey(".".join(where), key_node.start_mark.line + 1)
                keys.add(key)
                self._refuse_duplicates(value_node, where, seen)


class DuplicateKey(yaml.YAMLError):
    def __init__(self, path: str, line: int):
        super().__init__(path)
        self.path, self.line = path, line


def parse(text: str, source: str, prefix: str = "", error: type[ConfigError] = ConfigError) -> Any:
    """Parse YAML `text` with StrictLoader; a problem is an `error` of one line.

    `source` starts the message (the file's name, or the override as written);
    `prefix` is the key path the text sits under (an override's key). Line numbers
    are given for text of more than one line.
    """

    def at(line: int) -> str:
        return f" line {line}" if "\n" in text.strip() or not prefix else ""

    try:
        return yaml.load(text, Loader=StrictLoader)
    except RecursionError:  # PyYAML composes nested nodes recursively
        within = f" in the value of '{prefix}'" if prefix else ""
        raise error(f"{source}: not valid YAML{within} (lists or mappings nested too deep)") from None
    except DuplicateKey as err:
        path = f"{prefix}.{err.path}" if prefix else err.path
        raise error(f"{source}{at(err.line)}: duplicate key '{path}'") from None
    except yaml.reader.ReaderError as err:
        line = text[: err.position].count("\n") + 1
        raise error(f"{source}{at(line)}: not valid YAML text (character #x{err.character:04x} is not allowed)") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = at(mark.line + 1) if mark else ""
        problem = getattr(err, "problem", None) or getattr(err, "context", None) or str(err)
        within = f" in the value of '{prefix}'" if prefix else ""
        raise error(f"{source}{where}: not valid YAML{within} ({' '.join(str(problem).split())})") from None


def read(path) -> Any:
    """The parsed YAML file at `path` (a pathlib.Path); every problem is one line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (run from the project root or pass --params)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not a UTF-8 text file (byte 0x{data[err.start]:02x})") from None
    return parse(text, str(path))
