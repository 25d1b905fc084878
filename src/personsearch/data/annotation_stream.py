"""An annotation file as text decoded a block at a time, and its JSON values decoded one by one.

``formats.iter_annotation_list`` walks the top-level list with this; keeping only one entry and a
look-ahead in memory is what stops a small file of junk (millions of ``{}``) from becoming
gigabytes of Python objects. Integers too long to be ids are kept as ``BigInt`` so that one such
entry is reported instead of the whole file failing.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any, BinaryIO

from personsearch.errors import InputError

MAX_ENTRY_CHARS = 1 << 20  # the JSON text of one entry


class BigInt:
    """An integer literal too long for Python's int parsing limit or a 64-bit id: kept as its
    digit count, so the entry is reported instead of the whole file failing."""

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"<integer of {self.digits} digits>"


def parse_int(text: str) -> int | BigInt:
    return int(text) if len(text) <= 20 else BigInt(text)  # 20 characters hold every int64


_DECODER = json.JSONDecoder(parse_int=parse_int)
_SPACE = re.compile(r"[ \t\n\r]*")
_READ_BYTES = 1 << 18
_LOOKAHEAD = MAX_ENTRY_CHARS + 64  # unread text kept ahead of an entry's start (or the rest of the file)
_BOMS = (
    (b"\xef\xbb\xbf", "utf-8", "UTF-8"),
    (b"\xff\xfe", "utf-16-le", "UTF-16"),
    (b"\xfe\xff", "utf-16-be", "UTF-16"),
)


class AnnotationText:
    """The file as text, decoded a block at a time: ``buf[pos:]`` is unread, and ``fill`` keeps
    at least ``_LOOKAHEAD`` characters of it (or the rest of the file) in memory, no more."""

    def __init__(self, path: Path, handle: BinaryIO) -> None:
        self.path = path
        self.handle = handle
        head = handle.read(3)
        bom, encoding, self.label = next(
            (found for found in _BOMS if head.startswith(found[0])), (b"", "utf-8", "UTF-8")
        )
        handle.seek(len(bom))
        self.decoder = codecs.getincrementaldecoder(encoding)("strict")
        self.offset = len(bom)  # bytes read so far
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.line, self.column = 1, 0  # where buf[0] is: line (1-based), column (0-based)

    def fill(self) -> None:
        if self.eof or len(self.buf) - self.pos >= _LOOKAHEAD:
            return
        if self.pos:
            newlines = self.buf.count("\n", 0, self.pos)
            if newlines:
                self.line += newlines
                self.column = self.pos - self.buf.rfind("\n", 0, self.pos) - 1
            else:
                self.column += self.pos
            self.buf, self.pos = self.buf[self.pos :], 0
        parts, have = [self.buf], len(self.buf)
        while have < _LOOKAHEAD and not self.eof:
            block = self.handle.read(_READ_BYTES)
            self.eof = not block
            pending = self.decoder.getstate()[0]
            try:
                text = self.decoder.decode(block, final=self.eof)
            except UnicodeDecodeError as exc:
                data = pending + block
                shown = f"invalid byte 0x{data[exc.start]:02x}" if exc.start < len(data) else "incomplete character"
                raise InputError(
                    f"{self.path} is not {self.label} text: {shown} at offset {self.offset - len(pending) + exc.start}",
                    hint="re-save the annotation file as UTF-8",
                ) from None
            self.offset += len(block)
            parts.append(text)
            have += len(text)
        self.buf = "".join(parts)

    def where(self, index: int) -> tuple[int, int]:
        """(line, column), both 1-based, of ``buf[index]``."""
        newlines = self.buf.count("\n", 0, index)
        if newlines:
            return self.line + newlines, index - self.buf.rfind("\n", 0, index)
        return self.line, self.column + index + 1

    def next_char(self) -> str:
        """Skip whitespace; the next character, or '' at the end of the file."""
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self.fill()

    def malformed(self, index: int, message: str) -> InputError:
        line, column = self.where(index)
        return InputError(f"{self.path}: malformed JSON at line {line}, column {column}: {message}")

    def too_large(self, entry: int) -> InputError:
        line, _ = self.where(self.pos)
        return InputError(
            f"{self.path}: entry {entry} (line {line}) is over {MAX_ENTRY_CHARS >> 20} MiB of JSON; "
            "an annotation entry is a small record, so this is not an annotation file",
            hint="annotation files are read entry by entry to keep memory bounded; "
            "check that --root points at the right dataset",
        )

    def value(self, entry: int) -> Any:
        """Decode the JSON value at ``pos`` (``fill`` was called), at most ``MAX_ENTRY_CHARS`` long."""
        start = self.pos
        try:
            value, end = _DECODER.raw_decode(self.buf, start)
        except json.JSONDecodeError as exc:
            truncated = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - 16
            if not self.eof and truncated:  # runs past the look-ahead: longer than an entry may be
                raise self.too_large(entry) from None
            raise self.malformed(exc.pos, exc.msg) from None
        except RecursionError:
            line, _ = self.where(start)
            raise InputError(
                f"{self.path}: JSON nested too deeply to be an annotation list (entry {entry}, line {line})"
            ) from None
        if end - start > MAX_ENTRY_CHARS:
            raise self.too_large(entry)
        self.pos = end
        return value
