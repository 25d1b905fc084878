"""Settings sources merged in order, remembering which source set each key, so that an error can say
where a value came from; values no setting could hold are refused as they arrive."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from personsearch.errors import InputError
from personsearch.settings.limits import MAX_DEPTH
from personsearch.settings.printable import safe_text, short_repr
from personsearch.settings.tree import is_section, known_keys
from personsearch.settings.yaml_loader import UnparsedNumber


class Layers:
    """Merges nested dicts, remembering which source set each dotted key."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.origin: dict[str, str] = {}

    def merge(self, values: Mapping[str, Any], source: str | Mapping[str, str], prefix: str = "") -> None:
        target = self.data
        for part in [p for p in prefix.split(".") if p]:
            target = target.setdefault(part, {})
        self._merge_into(target, values, source, prefix)

    def _merge_into(
        self, target: dict[str, Any], values: Mapping[str, Any], source: str | Mapping[str, str], prefix: str
    ) -> None:
        for key, value in values.items():
            if not isinstance(key, str):  # YAML reads `yes:`, `1:`, `~:` as a boolean, number, null
                where = source if isinstance(source, str) else _nearest_origin(source, f"{prefix}.{key}")
                raise InputError(
                    f"key {short_repr(key)} in {prefix or 'the top level'} (from {where}) is not a setting name",
                    hint="YAML reads yes/no/on/off, numbers and ~ as values, not names; quote the key "
                    f"or use one of: {', '.join(known_keys(prefix)) or 'the documented keys'}",
                )
            dotted = f"{prefix}.{key}" if prefix else str(key)
            origin = source if isinstance(source, str) else _nearest_origin(source, dotted)
            if isinstance(value, Mapping) and is_section(dotted):
                existing = target.get(key)
                if not isinstance(existing, dict):
                    existing = target[key] = {}
                self._merge_into(existing, value, source, dotted)
            else:
                _screen(value, dotted, origin)
                target[key] = value
                self.origin[dotted] = origin


def _nearest_origin(origins: Mapping[str, str], dotted: str) -> str:
    """The line of ``dotted`` or of the nearest enclosing key (a key reached through an alias has none)."""
    probe = dotted
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return origins.get("", "?")


def _screen(value: Any, dotted: str, source: str) -> None:
    """Refuse what no setting can hold before anything walks it: nesting deeper than ``MAX_DEPTH``
    (a recursion crash later) and numbers too long to convert. Iterative; shared (aliased) parts
    are visited once, so a YAML alias bomb costs its size, not its expansion."""
    seen: set[int] = set()
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, UnparsedNumber):
            raise InputError(
                f"invalid setting {safe_text(dotted)} = {item!r} (from {source}): far outside any valid range",
                hint="settings hold numbers of at most 19 digits",
            )
        if isinstance(item, (bytes, set, frozenset)):  # YAML !!binary, !!set: no setting holds them
            kind = "binary data (!!binary)" if isinstance(item, bytes) else "an unordered set (!!set)"
            raise InputError(
                f"invalid setting {safe_text(dotted)} (from {source}): {kind} is no setting value",
                hint="write text as plain text and several values as a list in order, e.g. [384, 128]",
            )
        if isinstance(item, (str, int, float, bool)) or item is None:
            continue
        if depth >= MAX_DEPTH:
            raise InputError(
                f"invalid setting {safe_text(dotted)} (from {source}): nested more than {MAX_DEPTH} levels deep",
                hint="settings are numbers, strings, or short lists of them",
            )
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Mapping):
            stack.extend((part, depth + 1) for pair in item.items() for part in pair)
        elif isinstance(item, (list, tuple)):
            stack.extend((part, depth + 1) for part in item)
