"""The one typed settings tree shared by every verb.

Defaults reproduce the IRRA recipe (DESIGN.md). Sources, later wins: defaults, a YAML file,
environment variables ``PERSONSEARCH_SECTION__KEY``, ``--set section.key=value`` overrides, and a
verb's own options. Every error names the key, the value and where it came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from personsearch.errors import InputError

ENV_PREFIX = "PERSONSEARCH_"
LOSS_NAMES = ("sdm", "itc", "id", "mlm", "cmpm")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


class DataSettings(Section):
    """Where the prepared dataset is and how samples are drawn from it."""

    root: str | None = Field(None, description="prepared dataset folder (written by `personsearch prepare`)")
    augment: bool = Field(True, description="training augmentation: flip, pad 10 + random crop, random erasing")
    sampler: Literal["random", "identity"] = Field("random", description="random batches or P identities x K")
    num_instances: int = Field(4, ge=1, description="K images per identity for the identity sampler")
    workers: int = Field(2, ge=0, description="dataloader worker processes")
    skip_corrupt: bool = Field(True, description="skip unreadable images during training (counted) instead of failing")


class ArchSettings(Section):
    """Architecture of a randomly initialised CLIP (ignored when weights are loaded: read from them)."""

    embed_dim: int = Field(512, ge=1)
    vision_width: int = Field(768, ge=1)
    vision_layers: int = Field(12, ge=1)
    vision_heads: int = Field(12, ge=1)
    patch_size: int = Field(16, ge=1)
    text_width: int = Field(512, ge=1)
    text_layers: int = Field(12, ge=1)
    text_heads: int = Field(8, ge=1)


class ModelSettings(Section):
    pretrained: str | None = Field(
        "ViT-B/16",
        description="CLIP weights: a model name resolved in ~/.cache/clip, a file, or a folder; null = random init",
    )
    image_size: tuple[int, int] = Field((384, 128), description="input (height, width)")
    stride: int = Field(16, ge=1, description="patch stride; below the patch size the patches overlap")
    temperature: float = Field(0.02, gt=0, description="logit scale = 1 / temperature")
    cmt_depth: int = Field(4, ge=1, description="transformer blocks in the cross-modal branch")
    text_length: int = Field(77, ge=3, description="tokens per caption, SOT and EOT included")
    vocab_size: int = Field(49408, ge=1)
    arch: ArchSettings = Field(default_factory=ArchSettings)

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) <= 0:
            raise ValueError("image size must be two positive integers (height, width)")
        return value


class LossSettings(Section):
    names: str = Field("sdm+mlm+id", description="enabled losses joined by '+': sdm, itc, id, mlm, cmpm")
    sdm_weight: float = Field(1.0, ge=0)
    itc_weight: float = Field(1.0, ge=0)
    cmpm_weight: float = Field(1.0, ge=0)
    id_weight: float = Field(1.0, ge=0)
    mlm_weight: float = Field(1.0, ge=0)
    image_ids: bool = Field(False, description="SDM soft labels from image ids (factor below)")
    image_id_factor: float = Field(0.3, ge=0, le=1)
    gather: bool = Field(False, description="under DDP, gather features of all ranks for SDM/ITC")
    mlm_trim: bool = Field(
        False,
        description="cut the MLM branch to the batch's longest caption (faster; IRRA's cross-modal "
        "transformer attends over all text_length positions, padding included)",
    )

    @field_validator("names")
    @classmethod
    def _known_names(cls, value: str) -> str:
        parts = [part.strip().lower() for part in value.split("+") if part.strip()]
        if not parts:
            raise ValueError("at least one loss is needed, e.g. 'sdm+mlm+id'")
        unknown = [part for part in parts if part not in LOSS_NAMES]
        if unknown:
            raise ValueError(f"unknown loss {unknown[0]!r}; choose from {', '.join(LOSS_NAMES)}")
        return "+".join(dict.fromkeys(parts))

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(self.names.split("+"))


class MaskingSettings(Section):
    strategy: Literal["random", "attention"] = Field("random", description="IRRA random masking or AGM")
    ratio: float = Field(0.15, gt=0, le=1, description="share of caption tokens chosen for masking")
    temperature: float = Field(1.0, gt=0, description="AGM: draw probability proportional to importance^(1/τ)")
    layers: int = Field(1, ge=1, description="AGM: average EOT attention over the last N text layers")
    mix: float = Field(0.0, ge=0, le=1, description="AGM: chance a caption falls back to random masking")
    mask_prob: float = Field(0.8, ge=0, le=1, description="chosen token becomes <|mask|>")
    random_prob: float = Field(0.1, ge=0, le=1, description="chosen token becomes a random token")

    @model_validator(mode="after")
    def _probabilities(self) -> MaskingSettings:
        if self.mask_prob + self.random_prob > 1 + 1e-9:
            raise ValueError("mask_prob + random_prob must not exceed 1")
        return self


class OptimSettings(Section):
    optimizer: Literal["Adam", "AdamW", "SGD"] = "Adam"
    lr: float = Field(1e-5, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, description="SGD only")
    weight_decay: float = Field(4e-5, ge=0)
    weight_decay_bias: float = Field(0.0, ge=0)
    bias_lr_factor: float = Field(2.0, gt=0)
    lr_factor: float = Field(5.0, gt=0, description="lr multiplier of the new (non-CLIP) modules")
    grad_clip: float | None = Field(None, gt=0, description="max global gradient norm; null = off")


class ScheduleSettings(Section):
    mode: Literal["cosine", "step", "exp", "poly", "linear", "constant"] = "cosine"
    warmup_epochs: int = Field(5, ge=0)
    warmup_factor: float = Field(0.1, ge=0, le=1)
    warmup_method: Literal["linear", "constant"] = "linear"
    milestones: tuple[int, ...] = (20, 50)
    gamma: float = Field(0.1, gt=0)
    target_lr: float = Field(0.0, ge=0)
    power: float = Field(0.9, gt=0)


class TrainSettings(Section):
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(64, ge=1)
    log_period: int = Field(100, ge=1, description="steps between metrics.jsonl lines")
    eval_period: int = Field(1, ge=1, description="epochs between evaluations")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps")
    max_minutes: float | None = Field(None, gt=0, description="stop after this wall-clock budget")


class EvalSettings(Section):
    split: Literal["test", "val"] = "test"
    batch_size: int = Field(512, ge=1)
    i2t: bool = Field(False, description="also report image->text retrieval")


class IndexSettings(Section):
    shard_size: int = Field(65536, ge=1, description="embeddings per index shard")
    top_k: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="images per embedding batch")


class RuntimeSettings(Section):
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = Field(0, ge=0)
    output_dir: str = Field("runs", description="parent folder of run folders")


class Settings(Section):
    data: DataSettings = Field(default_factory=DataSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    loss: LossSettings = Field(default_factory=LossSettings)
    masking: MaskingSettings = Field(default_factory=MaskingSettings)
    optim: OptimSettings = Field(default_factory=OptimSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data (tuples become lists)."""
        return json.loads(self.model_dump_json())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def fingerprint(self) -> str:
        """Short hash of the resolved tree, stored beside checkpoints."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Resolution: layered sources with provenance, so errors can say where a value came from.


class _Layers:
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
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, Mapping) and value and _is_section(dotted):
                existing = target.get(key)
                if not isinstance(existing, dict):
                    existing = target[key] = {}
                self._merge_into(existing, value, source, dotted)
            else:
                target[key] = value
                self.origin[dotted] = source if isinstance(source, str) else source.get(dotted, "?")


def _section_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            dotted = f"{prefix}.{name}" if prefix else name
            paths.add(dotted)
            paths |= _section_paths(annotation, dotted)
    return paths


_SECTIONS = _section_paths(Settings)


def _is_section(dotted: str) -> bool:
    return dotted in _SECTIONS


def _yaml_key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line number, for messages that point into a YAML file."""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines[dotted] = key_node.start_mark.line + 1
                walk(value_node, dotted)

    if root is not None:
        walk(root, "")
    return lines


def _parse_scalar(text: str) -> Any:
    """Type a command-line or environment value the way YAML would ('2e-5' stays a string: pydantic coerces)."""
    try:
        return yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text


_MAX_CONFIG_BYTES = 1 << 20


def read_yaml_file(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Load a settings file safely; returns the data and the line of each dotted key."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}", hint="pass an existing YAML file to --config")
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        raise InputError(f"config file {path} is larger than 1 MiB; settings files are small YAML mappings")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = yaml.load(text, Loader=_BoundedLoader)
    except _AliasBomb:
        raise InputError(f"{path}: too many YAML aliases (an alias bomb?); write the values out") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{path}:{where} invalid YAML: {problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of sections (data:, model:, ...), got {type(data).__name__}")
    return data, _yaml_key_lines(text)


class _AliasBomb(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """Safe loader that refuses documents expanding far beyond their size through aliases."""

    _max_aliases = 100

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > self._max_aliases:
                raise _AliasBomb()
        return super().compose_node(parent, index)


def _env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    found: dict[str, tuple[Any, str]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
            continue
        dotted = ".".join(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        found[dotted] = (_parse_scalar(raw), f"environment {name}")
    return found


def parse_set(item: str) -> tuple[str, Any]:
    """Split one ``section.key=value`` override."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"--set {item!r}: expected section.key=value, e.g. --set optim.lr=2e-5")
    return key, _parse_scalar(value)


def _nest(dotted: str, value: Any) -> dict[str, Any]:
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

    ``base`` replaces the defaults (a run's saved ``config.yaml``); ``config`` is a YAML file or a
    mapping; ``sets`` are ``section.key=value`` strings; ``overrides`` are a verb's own options as
    dotted keys (``None`` values are ignored, so unset options do not override).
    """
    layers = _Layers()
    if base is not None:
        layers.merge(base.to_dict() if isinstance(base, Settings) else dict(base), "the run's config.yaml")
    if config is not None:
        if isinstance(config, Mapping):
            layers.merge(config, "config")
        else:
            data, lines = read_yaml_file(config)
            origins = {key: f"{config}:{line}" for key, line in lines.items()}
            layers.merge(data, origins)
    for dotted, (value, source) in _env_overrides(os.environ if environ is None else environ).items():
        layers.merge(_nest(dotted, value), source)
    for item in sets:
        dotted, value = parse_set(item)
        layers.merge(_nest(dotted, value), f"--set {item}")
    for dotted, value in (overrides or {}).items():
        if value is not None:
            layers.merge(_nest(dotted, value), f"option for {dotted}")
    try:
        return Settings.model_validate(layers.data)
    except ValidationError as exc:
        raise InputError(_describe(exc, layers)) from None


def _describe(exc: ValidationError, layers: _Layers) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    dotted = ".".join(loc)
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
        known = _known_keys(parent)
        hint = f"; known keys in {parent or 'the top level'}: {', '.join(known)}" if known else ""
        return f"unknown setting {dotted!r} (from {source}){hint}"
    value = error.get("input")
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    shown = f" = {_short_repr(value)}" if not isinstance(value, dict) else ""
    return f"invalid setting {dotted}{shown} (from {source}): {message}"


def _short_repr(value: Any) -> str:
    """A bounded repr: a value built from YAML aliases can expand to billions of items."""
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxstring, short.maxother = 3, 6, 6, 80, 80
    return short.repr(value)


def _known_keys(dotted: str) -> list[str]:
    model: type[BaseModel] = Settings
    for part in [p for p in dotted.split(".") if p]:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def load_run_settings(run_dir: str | Path) -> Settings:
    """Read a run's saved settings back (every verb that takes a run starts here)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise InputError(f"{run_dir} has no config.yaml; is it a run folder made by `personsearch train`?")
    return resolve_settings(config=path, environ={})
