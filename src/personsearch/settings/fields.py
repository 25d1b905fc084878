"""The value types settings are declared with, each refusing what pydantic alone would let through
(booleans and fractions as integers, NUL bytes, lone surrogates) with a message a user can act on."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from personsearch.settings.limits import INT64_MAX, MAX_IMAGE_SIDE, MAX_TEXT_CHARS
from personsearch.settings.yaml_loader import UnparsedNumber


def _whole_number(value: Any) -> Any:
    """Integers only: no booleans, no fractions, no numbers beyond 64 bits (checked before parsing)."""
    if isinstance(value, UnparsedNumber):
        raise ValueError("this number is far outside any valid range")
    if isinstance(value, bool):
        raise ValueError("expected a whole number, got a boolean (true/false)")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("expected a whole number, got a non-finite value")
        if not value.is_integer():
            raise ValueError("expected a whole number, got a fraction")
        if abs(value) > INT64_MAX:
            raise ValueError("this number is far outside any valid range")
        return int(value)
    if isinstance(value, str) and len(value.strip().replace("_", "")) > 20:
        raise ValueError("expected a whole number of at most 19 digits")
    return value


def _clean_text(value: str) -> str:
    """No NUL bytes (no path or name can hold one) and no lone surrogates (bytes that were not UTF-8)."""
    if "\x00" in value:
        raise ValueError("contains a NUL byte, which no path or name can hold")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"is not valid text: character {exc.start} is a lone surrogate {value[exc.start]!r} "
            "(bytes that are not UTF-8)"
        ) from None
    return value


def _clean_text_input(value: Any) -> Any:
    """The same check on text as given, before pydantic's own (whose message for a surrogate is obscure)."""
    return _clean_text(value) if isinstance(value, str) else value


_DEVICE = re.compile(r"[a-z][a-z0-9_]{0,15}(:[0-9]{1,4})?")


def _device_name(value: str) -> str:
    """A torch device name (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``); availability is checked when used."""
    if not _DEVICE.fullmatch(value):
        raise ValueError("expected a device name such as auto, cpu, cuda or cuda:1")
    return value


#: An int setting: whole numbers only, checked before pydantic parses (bounds follow per field).
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
Text = Annotated[
    str, Field(max_length=MAX_TEXT_CHARS), BeforeValidator(_clean_text_input), AfterValidator(_clean_text)
]
PathText = Annotated[
    str, Field(min_length=1, max_length=MAX_TEXT_CHARS), BeforeValidator(_clean_text_input), AfterValidator(_clean_text)
]
Probability = Annotated[float, Field(ge=0, le=1)]
Beta = Annotated[float, Field(ge=0, lt=1)]
Side = Annotated[WholeNumber, Field(ge=1, le=MAX_IMAGE_SIDE)]
DeviceName = Annotated[str, AfterValidator(_device_name)]
