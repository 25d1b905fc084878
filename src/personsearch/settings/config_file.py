"""Reading a settings file: a small regular UTF-8 file holding one YAML mapping of sections, every
refusal naming the file and, where it has one, the line."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from personsearch.errors import InputError
from personsearch.settings.limits import MAX_CONFIG_BYTES
from personsearch.settings.printable import safe_text, short_repr
from personsearch.settings.tree import Settings
from personsearch.settings.yaml_loader import YamlRefused, load_yaml

#: The file a run saves its resolved settings in (personsearch.runs reads it back).
SETTINGS_FILE = "config.yaml"


def _read_config_text(path: Path) -> str:
    """The text of a settings file: a regular file (a FIFO would block, a device never end) of at
    most 1 MiB, in UTF-8."""
    shown = safe_text(path, 300)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"config file not found: {shown}", hint="pass an existing YAML file to --config") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"config file {shown} cannot be read: {reason}",
                         hint="pass an existing YAML file to --config") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"config file {shown} is a folder", hint="pass a YAML file to --config")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"config file {shown} is not a regular file (a pipe, device or socket)",
                         hint="pass a YAML file to --config")
    if info.st_size > MAX_CONFIG_BYTES:
        raise InputError(f"config file {shown} is larger than 1 MiB; settings files are small YAML mappings")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise InputError(f"config file {shown} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # replaced between the checks
            raise InputError(f"config file {shown} is not a regular file", hint="pass a YAML file to --config")
        try:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise InputError(f"config file {shown} cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise InputError(f"config file {shown} is larger than 1 MiB; settings files are small YAML mappings")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"config file {shown} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_yaml_file(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Load a settings file safely; returns the data and the line of each dotted key."""
    path = Path(path)
    text = _read_config_text(path)
    shown = safe_text(path, 300)
    try:
        data, lines = load_yaml(text)
    except YamlRefused as exc:
        where = f":{exc.line}" if exc.line else ""
        raise InputError(f"{shown}{where}: {exc.message}", hint=exc.hint) from None
    except yaml.composer.ComposerError as exc:
        if "single document" not in str(exc.context):
            raise InputError(f"{shown}: invalid YAML: {safe_text(exc, 300)}") from None
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise InputError(f"{shown}:{line}: a second YAML document starts here; a settings file holds one",
                         hint="remove the '---' and merge the documents into one mapping") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{shown}:{where} invalid YAML: {safe_text(problem, 300)}") from None
    except (ValueError, TypeError) as exc:  # a constructor PyYAML does not guard (e.g. a bad !!timestamp)
        raise InputError(f"{shown}: invalid YAML value: {safe_text(exc, 300)}") from None
    if data is None:
        if text.strip():  # comments only: a file that sets nothing
            return {}, {}
        raise InputError(f"config file {shown} is empty",
                         hint="write a YAML mapping of sections (e.g. optim: {lr: 2.0e-5}), or leave out --config")
    if not isinstance(data, dict):
        raise InputError(f"{shown}: expected a mapping of sections (data:, model:, ...), got {type(data).__name__}")
    bad = next((key for key in data if not isinstance(key, str)), None)
    if bad is not None:
        raise InputError(f"{shown}:{lines.get(str(bad), '?')}: key {short_repr(bad)} is not a section name",
                         hint=f"sections are {', '.join(Settings.model_fields)}")
    return data, lines

