"""User values made safe to quote in a message: bounded in length, control characters escaped."""

from __future__ import annotations

import reprlib
from typing import Any


class _BoundedRepr(reprlib.Repr):
    """reprlib with integers bounded too (``repr`` of an integer of over 4,300 digits raises)."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)


def short_repr(value: Any) -> str:
    """A bounded repr: a value built from YAML aliases can expand to billions of items."""
    short = _BoundedRepr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxstring, short.maxother = 3, 6, 6, 80, 80
    short.maxdict, short.maxset, short.maxfrozenset = 6, 6, 6
    return short.repr(value)


def safe_text(text: Any, limit: int = 120) -> str:
    """Text safe to print in a message: escapes for control characters and undecodable bytes, bounded."""
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if text.isprintable():
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    return "".join(ch if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF else repr(ch)[1:-1] for ch in text)
