"""One message for a refused settings tree: the key, the value and the source that set it (a file
and line, an environment variable, a --set), and what would fix it."""

from __future__ import annotations

from pydantic import ValidationError

from personsearch.settings.layers import Layers
from personsearch.settings.printable import safe_text, short_repr
from personsearch.settings.tree import Inconsistent, is_section, known_keys


def describe(exc: ValidationError, layers: Layers) -> str:
    """The first error of ``exc`` as one line: the key, its value, the source that set it, the reason."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    dotted = ".".join(loc)
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, Inconsistent):
        return _describe_inconsistent(cause, dotted, layers)
    # A tuple element error (model.image_size.0) belongs to its field.
    source = None
    probe = loc[:]
    while probe and source is None:
        source = layers.origin.get(".".join(probe))
        probe.pop()
    if source is None:  # an error on a whole section: attribute it to any key set inside it
        source = next((src for key, src in layers.origin.items() if key.startswith(dotted + ".")), "defaults")
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = ".".join(loc[:-1])
        known = known_keys(parent)
        hint = f"; known keys in {parent or 'the top level'}: {', '.join(known)}" if known else ""
        if "." in loc[-1]:
            hint += "; write nested keys as sections (optim: {lr: ...}), not with dots"
        return f"unknown setting {short_repr(dotted)} (from {source}){hint}"
    value = error.get("input")
    if value is None and is_section(dotted):
        return f"section {dotted} is empty (from {source}): give it keys, or leave it out"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    shown = f" = {short_repr(value)}" if not isinstance(value, dict) else ""
    return f"invalid setting {safe_text(dotted)}{shown} (from {source}): {message}"


def _describe_inconsistent(cause: Inconsistent, section: str, layers: Layers) -> str:
    """Name the first involved key the user set (else the first one), its value and source."""
    keys = [f"{section}.{key}" if section else key for key in cause.values]
    values = dict(zip(keys, cause.values.values(), strict=True))

    def origin(key: str) -> str | None:
        probe = key
        while probe:
            if probe in layers.origin:
                return layers.origin[probe]
            probe = probe.rpartition(".")[0]
        return None

    primary = next((key for key in keys if origin(key) is not None), keys[0])
    return (f"invalid setting {primary} = {short_repr(values[primary])} (from {origin(primary) or 'defaults'}): "
            f"{cause.reason}")

