"""What a TorchScript archive's exported code says about its classes, read as text, never run.

Each ``code/**/*.py`` file of an archive declares its classes with ``__parameters__`` and
``__buffers__`` lists; those names decide which attributes are state. A class that defines
``__setstate__`` would run code on load, and is refused by the reader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["ClassInfo", "parse_classes"]


@dataclass
class ClassInfo:
    """One class of the archive's code: its base, and the attributes it declares as state."""

    base: str
    params: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    declared: bool = False  # the class lists its parameters (else every tensor attribute counts)
    runs_code: bool = False

    @property
    def is_module(self) -> bool:
        return self.base.rsplit(".", 1)[-1] == "Module"


_LIST_ITEM = re.compile(r'"((?:[^"\\]|\\.)*)"')


def parse_classes(text: str) -> dict[str, ClassInfo]:
    """``__parameters__``/``__buffers__`` of the classes in one exported code file (parsed, not run)."""
    classes: dict[str, ClassInfo] = {}
    current: ClassInfo | None = None
    for line in text.splitlines():
        if line and not line[0].isspace():
            match = re.match(r"class (\w+)\(([\w.]*)\):", line)
            current = classes.setdefault(match.group(1), ClassInfo(match.group(2))) if match else None
            continue
        if current is None or not line.startswith("  ") or line.startswith("   "):
            continue
        if line.startswith("  __parameters__ = ["):
            current.params, current.declared = _LIST_ITEM.findall(line), True
        elif line.startswith("  __buffers__ = ["):
            current.buffers = _LIST_ITEM.findall(line)
        elif line.startswith("  def __setstate__("):
            current.runs_code = True
    return classes
