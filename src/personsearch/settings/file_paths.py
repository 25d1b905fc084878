"""Path settings in a settings file are relative to that file: a run's ``config.yaml`` records its
dataset (``data.root``) relative to the run folder, so runs and data moved or copied together
keep working, and reading any settings file (a run's, or one passed to ``--config``) resolves a
relative ``data.root`` against the file's folder. Absolute values (every run saved before this
rule) are read as they are; ``--set``, the environment and a verb's options stay relative to the
current folder. The rule for which paths are written relative is ``personsearch.io.recorded``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from personsearch.io.recorded import path_from_record, path_to_record
from personsearch.settings.tree import Settings

#: (section, key) of every setting that names a path relative to the settings file holding it.
FILE_RELATIVE_PATHS = (("data", "root"),)


def anchor_file_paths(data: Mapping[str, Any], folder: str | Path) -> dict[str, Any]:
    """A settings file's mapping with each relative path setting resolved against ``folder`` (the
    file's folder); everything else, an absolute or ``~`` path and a value that is no text (left
    for validation to name) included, as it is. ``data`` itself is not changed."""
    out = dict(data)
    for section, key in FILE_RELATIVE_PATHS:
        values = out.get(section)
        if not isinstance(values, Mapping):
            continue
        value = values.get(key)
        if not isinstance(value, str) or not value or "\x00" in value or value.startswith("~"):
            continue
        out[section] = {**values, key: str(path_from_record(value, folder))}
    return out


def settings_file_text(settings: Settings, folder: str | Path) -> str:
    """``settings`` as YAML for a file in ``folder`` (a run's ``config.yaml``), each path setting
    recorded relative to ``folder`` where the rule allows (``path_to_record``)."""
    recorded = settings.model_copy(deep=True)
    for section, key in FILE_RELATIVE_PATHS:
        part = getattr(recorded, section)
        value = getattr(part, key)
        if value:
            setattr(part, key, path_to_record(value, folder))
    return recorded.to_yaml()


__all__ = ["FILE_RELATIVE_PATHS", "anchor_file_paths", "settings_file_text"]
