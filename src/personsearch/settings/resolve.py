"""Resolving the settings tree from its sources, later wins: defaults (or a run's saved settings), a
YAML file, environment variables ``PERSONSEARCH_SECTION__KEY``, ``--set section.key=value``
overrides and a verb's own options."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from personsearch.errors import InputError
from personsearch.settings.config_file import read_yaml_file
from personsearch.settings.file_paths import anchor_file_paths
from personsearch.settings.layers import Layers
from personsearch.settings.messages import describe
from personsearch.settings.printable import safe_text
from personsearch.settings.tree import Settings
from personsearch.settings.yaml_loader import YamlRefused, load_yaml

ENV_PREFIX = "PERSONSEARCH_"


def _parse_scalar(text: str, source: str) -> Any:
    """Type a command-line or environment value the way YAML would ('2e-5' stays a string: pydantic
    coerces); text that is not YAML stays text, but a value YAML refuses for its shape is an error."""
    if not text.strip():
        return text
    try:
        return load_yaml(text)[0]
    except YamlRefused as exc:
        raise InputError(f"{source}: {exc.message}", hint=exc.hint) from None
    except (yaml.YAMLError, ValueError, TypeError):
        return text


def _env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    """Dotted key -> (typed value, source) for every ``PERSONSEARCH_SECTION__KEY`` variable."""
    found: dict[str, tuple[Any, str]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
            continue
        dotted = ".".join(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        source = f"environment {safe_text(name)}"
        found[dotted] = (_parse_scalar(raw, source), source)
    return found


def parse_set(item: str) -> tuple[str, Any]:
    """Split one ``section.key=value`` override."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"--set {safe_text(item)!r}: expected section.key=value, e.g. --set optim.lr=2e-5")
    return key, _parse_scalar(value, f"--set {safe_text(item)}")


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    """``a.b.c``, v -> ``{a: {b: {c: v}}}``, the shape every source is merged in."""
    out: dict[str, Any] = {}
    cursor = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return out


def resolve_settings(
    config: str | Path | Mapping[str, Any] | None = None,
    sets: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    base: Settings | Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings tree from its sources (later wins).

    ``base`` replaces the defaults (a run's saved ``config.yaml``); ``config`` is a YAML file (a
    relative ``data.root`` in it is relative to the file's folder: ``file_paths``) or a mapping;
    ``sets`` are ``section.key=value`` strings; ``overrides`` are a verb's own options as dotted
    keys (``None`` values are ignored, so unset options do not override).
    """
    layers = Layers()
    if base is not None:
        layers.merge(base.to_dict() if isinstance(base, Settings) else dict(base), "the run's config.yaml")
    if config is not None:
        if isinstance(config, Mapping):
            layers.merge(config, "config")
        else:
            data, lines = read_yaml_file(config)
            data = anchor_file_paths(data, Path(config).parent)  # a relative data.root: relative to the file
            shown = safe_text(config, 300)
            origins = {key: f"{shown}:{line}" for key, line in lines.items()}
            origins[""] = shown
            layers.merge(data, origins)
    for dotted, (value, source) in _env_overrides(os.environ if environ is None else environ).items():
        layers.merge(_nest(dotted, value), source)
    for item in sets:
        dotted, value = parse_set(item)
        layers.merge(_nest(dotted, value), f"--set {safe_text(item)}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            layers.merge(_nest(dotted, value), f"option for {dotted}")
    try:
        return Settings.model_validate(layers.data)
    except ValidationError as exc:
        raise InputError(describe(exc, layers)) from None

