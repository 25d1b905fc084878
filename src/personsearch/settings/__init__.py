"""The one typed settings tree shared by every verb.

Defaults reproduce the IRRA recipe (DESIGN.md). Sources, later wins: defaults, a YAML file,
environment variables ``PERSONSEARCH_SECTION__KEY``, ``--set section.key=value`` overrides, and a
verb's own options. Every error names the key, the value and where it came from.

Rooms: ``tree`` (the sections and their checks), ``fields`` (the value types), ``limits`` (every
bound), ``resolve`` (sources in order), ``layers`` (provenance), ``config_file`` and ``yaml_loader``
(reading YAML safely), ``file_paths`` (path settings relative to the file holding them), ``messages``
(one line per refusal).
"""

from __future__ import annotations

from personsearch.settings.config_file import SETTINGS_FILE, read_yaml_file
from personsearch.settings.fields import Beta, PathText, Probability, Side, Text
from personsearch.settings.file_paths import FILE_RELATIVE_PATHS, anchor_file_paths, settings_file_text
from personsearch.settings.limits import (
    CROSS_HEAD_WIDTH,
    INT64_MAX,
    MAX_BATCH,
    MAX_DEPTH,
    MAX_EPOCHS,
    MAX_HEADS,
    MAX_IMAGE_SIDE,
    MAX_LAYERS,
    MAX_PATCH,
    MAX_TEXT_CHARS,
    MAX_TEXT_LENGTH,
    MAX_WIDTH,
    MAX_WORKERS,
    SEED_MAX,
    TOKENIZER_VOCAB,
)
from personsearch.settings.resolve import ENV_PREFIX, parse_set, resolve_settings
from personsearch.settings.tree import (
    LOSS_NAMES,
    ArchSettings,
    DataSettings,
    EvalSettings,
    Inconsistent,
    IndexSettings,
    LossSettings,
    MaskingSettings,
    ModelSettings,
    OptimSettings,
    RuntimeSettings,
    ScheduleSettings,
    Section,
    Settings,
    TrainSettings,
)

__all__ = [
    "CROSS_HEAD_WIDTH",
    "ENV_PREFIX",
    "FILE_RELATIVE_PATHS",
    "INT64_MAX",
    "LOSS_NAMES",
    "MAX_BATCH",
    "MAX_DEPTH",
    "MAX_EPOCHS",
    "MAX_HEADS",
    "MAX_IMAGE_SIDE",
    "MAX_LAYERS",
    "MAX_PATCH",
    "MAX_TEXT_CHARS",
    "MAX_TEXT_LENGTH",
    "MAX_WIDTH",
    "MAX_WORKERS",
    "SEED_MAX",
    "SETTINGS_FILE",
    "TOKENIZER_VOCAB",
    "ArchSettings",
    "Beta",
    "DataSettings",
    "EvalSettings",
    "Inconsistent",
    "IndexSettings",
    "LossSettings",
    "MaskingSettings",
    "ModelSettings",
    "OptimSettings",
    "PathText",
    "Probability",
    "RuntimeSettings",
    "ScheduleSettings",
    "Section",
    "Settings",
    "Side",
    "Text",
    "TrainSettings",
    "anchor_file_paths",
    "parse_set",
    "read_yaml_file",
    "resolve_settings",
    "settings_file_text",
]
