"""A safe YAML loader bounded in depth, aliases and number length, that refuses duplicate keys.

PyYAML's own safe loader recurses once per nesting level, expands an alias bomb to billions of
items, converts integers of any length (Python refuses more than 4,300 digits; a long base-60
number takes minutes) and keeps the last of two equal keys silently.
"""

from __future__ import annotations

from typing import Any

import yaml

from personsearch.settings.limits import MAX_ALIASES, MAX_DEPTH, MAX_NUMBER_CHARS
from personsearch.settings.printable import safe_text


class UnparsedNumber:
    """A YAML number too long to be any setting (never converted: Python refuses integers of more
    than 4,300 digits, and a long base-60 number takes minutes); validation refuses it by key."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<a number of {len(self.text)} characters>"


class YamlRefused(Exception):
    """A YAML document refused for its shape (not its syntax); ``line`` is 1-based or None."""

    def __init__(self, message: str, line: int | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.hint = hint


class _SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits: nesting (its composer recurses once per level), aliases
    (an alias bomb expands to billions of items) and number length (Python refuses to convert an
    integer of more than 4,300 digits; a long base-60 number takes minutes)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]  # noqa: ANN001
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise YamlRefused(f"more than {MAX_ALIASES} YAML aliases (an alias bomb?)", mark.line + 1,
                                  hint="write the values out")
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise YamlRefused(f"YAML nested more than {MAX_DEPTH} levels deep", mark.line + 1,
                                  hint="settings are sections of keys holding numbers, strings or short lists")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):  # type: ignore[no-untyped-def]  # noqa: ANN001
        if len(node.value) > MAX_NUMBER_CHARS:
            return UnparsedNumber(node.value)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):  # type: ignore[no-untyped-def]  # noqa: ANN001
        if len(node.value) > MAX_NUMBER_CHARS:
            return UnparsedNumber(node.value)
        return super().construct_yaml_float(node)


_SettingsLoader.add_constructor("tag:yaml.org,2002:int", _SettingsLoader.construct_yaml_int)
_SettingsLoader.add_constructor("tag:yaml.org,2002:float", _SettingsLoader.construct_yaml_float)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _key_lines(root: yaml.Node | None) -> dict[str, int]:
    """Dotted key -> 1-based line, refusing a key written twice in one mapping (PyYAML would keep
    the last silently). Each node is visited once (aliases share nodes)."""
    lines: dict[str, int] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")] if root is not None else []
    while stack:
        node, prefix = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, prefix) for child in node.value)
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                stack.append((value_node, prefix))
                continue
            if isinstance(key_node, yaml.ScalarNode):
                dotted = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                marker = (key_node.tag, key_node.value)
                if marker in first:
                    raise YamlRefused(
                        f"duplicate key {safe_text(dotted)!r} at lines {first[marker]} and {line}", line,
                        hint="a key may appear once in a mapping; keep the value you mean",
                    )
                first[marker] = line
                lines.setdefault(dotted, line)
                stack.append((value_node, dotted))
    return lines


def load_yaml(text: str) -> tuple[Any, dict[str, int]]:
    """One YAML document -> (data, key lines); raises yaml.YAMLError or YamlRefused."""
    loader = _SettingsLoader(text)
    try:
        root = loader.get_single_node()
        lines = _key_lines(root)
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return data, lines
