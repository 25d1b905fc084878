"""The one typed settings tree shared by every verb.

Defaults reproduce the IRRA recipe (DESIGN.md). Sources, later wins: defaults, a YAML file,
environment variables ``PERSONSEARCH_SECTION__KEY``, ``--set section.key=value`` overrides, and a
verb's own options. Every error names the key, the value and where it came from.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import reprlib
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from personsearch.errors import InputError

ENV_PREFIX = "PERSONSEARCH_"
LOSS_NAMES = ("sdm", "itc", "id", "mlm", "cmpm")


# Bounds every number is checked against where it is declared: wide enough for every real CLIP
# (ViT-bigG is 1664 wide, 48 layers deep), narrow enough that a slip of the keyboard is refused
# before a model is built rather than crashing (or filling the memory) inside training.
INT64_MAX = 2**63 - 1
#: The file a run saves its resolved settings in (personsearch.runs reads it back).
SETTINGS_FILE = "config.yaml"
SEED_MAX = 2**32 - 1  # numpy's legacy seeding and PYTHONHASHSEED take 32-bit seeds
MAX_WIDTH = 8192
MAX_LAYERS = 256
MAX_HEADS = 1024
MAX_IMAGE_SIDE = 8192
MAX_PATCH = 1024
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_WORKERS = 256
MAX_TEXT_CHARS = 4096
#: The CLIP tokenizer's ids (personsearch.text): 49,405 BPE symbols, then <|mask|>=49405,
#: <|startoftext|>=49406, <|endoftext|>=49407; the token table and the MLM head need them all.
TOKENIZER_VOCAB = 49408
#: Captions are prepared as 77 tokens (SOT + BPE + EOT), the context of every CLIP checkpoint.
MAX_TEXT_LENGTH = 77
#: The cross-modal branch uses IRRA's heads of 64 channels (heads = embedding size / 64).
CROSS_HEAD_WIDTH = 64


class _Unparsed:
    """A YAML number too long to be any setting (never converted: Python refuses integers of more
    than 4,300 digits, and a long base-60 number takes minutes); validation refuses it by key."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<a number of {len(self.text)} characters>"


class Inconsistent(ValueError):
    """Settings that are each valid but do not fit together; ``values`` are the keys involved
    (relative to the section that checks them), the first one set by the user is named."""

    def __init__(self, reason: str, values: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.values = values


def _whole_number(value: Any) -> Any:
    """Integers only: no booleans, no fractions, no numbers beyond 64 bits (checked before parsing)."""
    if isinstance(value, _Unparsed):
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


_DEVICE = re.compile(r"[a-z][a-z0-9_]{0,15}(:[0-9]{1,4})?")


def _device_name(value: str) -> str:
    """A torch device name (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``); availability is checked when used."""
    if not _DEVICE.fullmatch(value):
        raise ValueError("expected a device name such as auto, cpu, cuda or cuda:1")
    return value


#: Marks an int field: whole numbers only, checked before pydantic parses (bounds follow per field).
_WHOLE = BeforeValidator(_whole_number)


def _clean_text_input(value: Any) -> Any:
    """The same check on text as given, before pydantic's own (whose message for a surrogate is obscure)."""
    return _clean_text(value) if isinstance(value, str) else value


Text = Annotated[
    str, Field(max_length=MAX_TEXT_CHARS), BeforeValidator(_clean_text_input), AfterValidator(_clean_text)
]
PathText = Annotated[
    str, Field(min_length=1, max_length=MAX_TEXT_CHARS), BeforeValidator(_clean_text_input), AfterValidator(_clean_text)
]
Probability = Annotated[float, Field(ge=0, le=1)]
Beta = Annotated[float, Field(ge=0, lt=1)]
Side = Annotated[int, _WHOLE, Field(ge=1, le=MAX_IMAGE_SIDE)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


class DataSettings(Section):
    """Where the prepared dataset is and how samples are drawn from it."""

    root: PathText | None = Field(None, description="prepared dataset folder (written by `personsearch prepare`)")
    augment: bool = Field(
        True, description="augmentation: pad 10 + random crop, random erasing (the flip stays either way, as IRRA)"
    )
    sampler: Literal["random", "identity"] = Field("random", description="random batches or P identities x K")
    num_instances: Annotated[int, _WHOLE] = Field(
        4, ge=1, le=MAX_BATCH, description="K images per identity for the identity sampler"
    )
    workers: Annotated[int, _WHOLE] = Field(2, ge=0, le=MAX_WORKERS, description="dataloader worker processes")
    skip_corrupt: bool = Field(True, description="skip unreadable images during training (counted) instead of failing")


class ArchSettings(Section):
    """Architecture of a randomly initialised CLIP (ignored when weights are loaded: read from them)."""

    embed_dim: Annotated[int, _WHOLE, Field(ge=1, le=MAX_WIDTH)] = 512
    vision_width: Annotated[int, _WHOLE, Field(ge=1, le=MAX_WIDTH)] = 768
    vision_layers: Annotated[int, _WHOLE, Field(ge=1, le=MAX_LAYERS)] = 12
    vision_heads: Annotated[int, _WHOLE, Field(ge=1, le=MAX_HEADS)] = 12
    patch_size: Annotated[int, _WHOLE, Field(ge=1, le=MAX_PATCH)] = 16
    text_width: Annotated[int, _WHOLE, Field(ge=1, le=MAX_WIDTH)] = 512
    text_layers: Annotated[int, _WHOLE, Field(ge=1, le=MAX_LAYERS)] = 12
    text_heads: Annotated[int, _WHOLE, Field(ge=1, le=MAX_HEADS)] = 8

    @model_validator(mode="after")
    def _heads_divide_widths(self) -> ArchSettings:
        for tower in ("vision", "text"):
            width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
            if width % heads:
                raise Inconsistent(
                    f"{tower}_width {width} must be a multiple of {tower}_heads {heads} "
                    "(each attention head gets width / heads channels)",
                    {f"{tower}_heads": heads, f"{tower}_width": width},
                )
        return self


class ModelSettings(Section):
    pretrained: PathText | None = Field(
        "ViT-B/16",
        description="CLIP weights: a model name resolved in ~/.cache/clip, a file, or a folder; null = random init",
    )
    image_size: tuple[Side, Side] = Field((384, 128), description="input (height, width)")
    stride: Annotated[int, _WHOLE] = Field(
        16, ge=1, le=MAX_PATCH, description="patch stride; below the patch size the patches overlap"
    )
    temperature: float = Field(0.02, ge=1e-4, le=100, description="logit scale = 1 / temperature")
    cmt_depth: Annotated[int, _WHOLE] = Field(
        4, ge=1, le=MAX_LAYERS, description="transformer blocks in the cross-modal branch"
    )
    text_length: Annotated[int, _WHOLE] = Field(
        77, ge=3, le=MAX_TEXT_LENGTH, description="tokens per caption, SOT and EOT included (at most 77)"
    )
    vocab_size: Annotated[int, _WHOLE, Field(ge=TOKENIZER_VOCAB, le=1 << 20)] = Field(
        TOKENIZER_VOCAB, description="token table and MLM head rows; at least the tokenizer's 49,408 ids"
    )
    arch: ArchSettings = Field(default_factory=ArchSettings)


class LossSettings(Section):
    names: Text = Field("sdm+mlm+id", description="enabled losses joined by '+': sdm, itc, id, mlm, cmpm")
    sdm_weight: float = Field(1.0, ge=0, le=1e4)
    itc_weight: float = Field(1.0, ge=0, le=1e4)
    cmpm_weight: float = Field(1.0, ge=0, le=1e4)
    id_weight: float = Field(1.0, ge=0, le=1e4)
    mlm_weight: float = Field(1.0, ge=0, le=1e4)
    image_ids: bool = Field(False, description="SDM soft labels from image ids (factor below)")
    image_id_factor: Probability = 0.3
    gather: bool = Field(False, description="under DDP, gather features of all ranks for SDM/ITC")
    mlm_trim: bool = Field(
        False,
        description="cut the MLM branch to the batch's longest caption (faster; IRRA's cross-modal "
        "transformer attends over all text_length positions, padding included)",
    )
    irra_masked_matching: bool = Field(
        False,
        description="with mlm: SDM/ITC/CMPM/ID read the MLM-masked caption, as IRRA's code does (its "
        "masking writes into the caption array); false: clean captions, as the paper describes",
    )

    @field_validator("names")
    @classmethod
    def _known_names(cls, value: str) -> str:
        parts = [part.strip().lower() for part in value.split("+") if part.strip()]
        if not parts:
            raise ValueError("at least one loss is needed, e.g. 'sdm+mlm+id'")
        unknown = [part for part in parts if part not in LOSS_NAMES]
        if unknown:
            raise ValueError(f"unknown loss {_short_repr(unknown[0])}; choose from {', '.join(LOSS_NAMES)}")
        return "+".join(dict.fromkeys(parts))

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(self.names.split("+"))


class MaskingSettings(Section):
    strategy: Literal["random", "attention"] = Field("random", description="IRRA random masking or AGM")
    ratio: float = Field(0.15, gt=0, le=1, description="share of caption tokens chosen for masking")
    temperature: float = Field(
        1.0, gt=0, le=1e6, description="AGM: draw probability proportional to importance^(1/τ)"
    )
    layers: Annotated[int, _WHOLE] = Field(
        1, ge=1, le=MAX_LAYERS, description="AGM: average EOT attention over the last N text layers"
    )
    mix: Probability = Field(0.0, description="AGM: chance a caption falls back to random masking")
    mask_prob: Probability = Field(0.8, description="chosen token becomes <|mask|>")
    random_prob: Probability = Field(0.1, description="chosen token becomes a random token")

    @model_validator(mode="after")
    def _probabilities(self) -> MaskingSettings:
        if self.mask_prob + self.random_prob > 1 + 1e-9:
            raise Inconsistent(
                f"mask_prob + random_prob must not exceed 1 (mask_prob {self.mask_prob}, "
                f"random_prob {self.random_prob})",
                {"mask_prob": self.mask_prob, "random_prob": self.random_prob},
            )
        return self


class OptimSettings(Section):
    optimizer: Literal["Adam", "AdamW", "SGD"] = "Adam"
    lr: float = Field(1e-5, gt=0, le=10)
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="Adam's moment decays, each in [0, 1)")
    eps: float = Field(1e-3, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    weight_decay: float = Field(4e-5, ge=0, le=10)
    weight_decay_bias: float = Field(0.0, ge=0, le=10)
    bias_lr_factor: float = Field(2.0, gt=0, le=1e4)
    lr_factor: float = Field(5.0, gt=0, le=1e4, description="lr multiplier of the new (non-CLIP) modules")
    grad_clip: float | None = Field(None, gt=0, le=1e12, description="max global gradient norm; null = off")


class ScheduleSettings(Section):
    mode: Literal["cosine", "step", "exp", "poly", "linear", "constant"] = "cosine"
    warmup_epochs: Annotated[int, _WHOLE, Field(ge=0, le=MAX_EPOCHS)] = 5
    warmup_factor: Probability = 0.1
    warmup_method: Literal["linear", "constant"] = "linear"
    milestones: tuple[Annotated[int, _WHOLE, Field(ge=0, le=MAX_EPOCHS)], ...] = Field(
        (20, 50), max_length=1000, description="step mode: epochs where the lr is multiplied by gamma (increasing)"
    )
    gamma: float = Field(0.1, gt=0, le=1, description="step and exp decay factor")
    target_lr: float = Field(0.0, ge=0, le=10)
    power: float = Field(0.9, gt=0, le=100)


class TrainSettings(Section):
    epochs: Annotated[int, _WHOLE, Field(ge=1, le=MAX_EPOCHS)] = 60
    batch_size: Annotated[int, _WHOLE, Field(ge=1, le=MAX_BATCH)] = 64
    log_period: Annotated[int, _WHOLE] = Field(100, ge=1, le=10**12, description="steps between metrics.jsonl lines")
    eval_period: Annotated[int, _WHOLE] = Field(1, ge=1, le=MAX_EPOCHS, description="epochs between evaluations")
    max_steps: Annotated[int, _WHOLE, Field(ge=1, le=10**12)] | None = Field(
        None, description="stop after this many optimizer steps"
    )
    max_minutes: float | None = Field(None, gt=0, le=1e8, description="stop after this wall-clock budget")


class EvalSettings(Section):
    split: Literal["test", "val"] = "test"
    batch_size: Annotated[int, _WHOLE, Field(ge=1, le=MAX_BATCH)] = 512
    i2t: bool = Field(False, description="also report image->text retrieval")
    select_on: Literal["val", "test"] = Field(
        "val",
        description="split evaluated after each epoch to pick best.safetensors; val falls back to test, with a "
        "warning, where the dataset has none (ICFG-PEDES); test is IRRA's protocol. The selected checkpoint is "
        "then reported on eval.split, which is also what `personsearch eval` evaluates by default",
    )
    unmatched: Literal["exclude", "miss"] = Field(
        "exclude",
        description="queries with no true match in the gallery: left out of R@K/mAP/mINP (exclude, counted as "
        "queries_without_match), or counted as misses scoring 0 (miss, IRRA's R@K-only evaluator)",
    )


class IndexSettings(Section):
    shard_size: Annotated[int, _WHOLE] = Field(65536, ge=1, le=2**31 - 1, description="embeddings per index shard")
    top_k: Annotated[int, _WHOLE, Field(ge=1, le=10**6)] = 10
    batch_size: Annotated[int, _WHOLE] = Field(64, ge=1, le=MAX_BATCH, description="images per embedding batch")


class RuntimeSettings(Section):
    device: Annotated[str, AfterValidator(_device_name)] = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: Annotated[int, _WHOLE, Field(ge=0, le=SEED_MAX)] = 0
    output_dir: PathText = Field("runs", description="parent folder of run folders")


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

    @model_validator(mode="after")
    def _fit_together(self) -> Settings:
        """What each section cannot see alone but would fail once the model or the sampler is built."""
        model, arch = self.model, self.model.arch
        if model.pretrained is None:  # the architecture comes from these settings, not from weights
            if "mlm" in self.loss.enabled and arch.embed_dim % CROSS_HEAD_WIDTH:
                raise Inconsistent(
                    f"model.arch.embed_dim {arch.embed_dim} must be a multiple of {CROSS_HEAD_WIDTH}: the MLM "
                    f"loss's cross-modal branch has heads of {CROSS_HEAD_WIDTH} channels",
                    {"model.arch.embed_dim": arch.embed_dim, "loss.names": self.loss.names},
                )
            _check_patch_grid(model.image_size, arch.patch_size, model.stride)
        train = self.train
        if self.data.sampler == "identity" and train.batch_size % self.data.num_instances:
            raise Inconsistent(
                f"train.batch_size {train.batch_size} must be a multiple of data.num_instances "
                f"{self.data.num_instances} (the identity sampler fills batches with K images per identity)",
                {"data.num_instances": self.data.num_instances, "train.batch_size": train.batch_size,
                 "data.sampler": self.data.sampler},
            )
        milestones = list(self.schedule.milestones)
        if milestones != sorted(milestones):
            raise Inconsistent(
                f"schedule.milestones must be increasing epochs, e.g. {sorted(milestones)}",
                {"schedule.milestones": self.schedule.milestones},
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data (tuples become lists)."""
        return json.loads(self.model_dump_json())

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def fingerprint(self) -> str:
        """Short hash of the resolved tree, stored beside checkpoints."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _check_patch_grid(image_size: tuple[int, int], patch: int, stride: int) -> None:
    """The rule of ``personsearch.model.clip.patch_grid``: patches at ``stride`` must cover every pixel."""
    if stride > patch:
        raise Inconsistent(
            f"model.stride {stride} must not exceed model.arch.patch_size {patch} (choose 1..{patch})",
            {"model.stride": stride, "model.arch.patch_size": patch},
        )
    for axis, size in zip(("height", "width"), image_size, strict=True):
        if size < patch or (size - patch) % stride:
            lower = max(patch, patch + (max(size - patch, 0) // stride) * stride)
            raise Inconsistent(
                f"image {axis} {size} cannot be covered by {patch}-pixel patches (model.arch.patch_size) at "
                f"stride {stride} (model.stride): use {patch} + k*{stride}, e.g. {lower} or {lower + stride}",
                {"model.image_size": image_size, "model.arch.patch_size": patch, "model.stride": stride},
            )


# --------------------------------------------------------------------------------------------
# Resolution: layered sources with provenance, so errors can say where a value came from.


#: How deep any value may nest (settings are at most three sections deep, values at most a list).
MAX_DEPTH = 32
_MAX_CONFIG_BYTES = 1 << 20
_MAX_ALIASES = 100
_MAX_NUMBER_CHARS = 100  # a number in YAML longer than this is no setting (64 binary digits + sign + 0b)


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
            if not isinstance(key, str):  # YAML reads `yes:`, `1:`, `~:` as a boolean, number, null
                where = source if isinstance(source, str) else _nearest_origin(source, f"{prefix}.{key}")
                raise InputError(
                    f"key {_short_repr(key)} in {prefix or 'the top level'} (from {where}) is not a setting name",
                    hint="YAML reads yes/no/on/off, numbers and ~ as values, not names; quote the key "
                    f"or use one of: {', '.join(_known_keys(prefix)) or 'the documented keys'}",
                )
            dotted = f"{prefix}.{key}" if prefix else str(key)
            origin = source if isinstance(source, str) else _nearest_origin(source, dotted)
            if isinstance(value, Mapping) and _is_section(dotted):
                existing = target.get(key)
                if not isinstance(existing, dict):
                    existing = target[key] = {}
                self._merge_into(existing, value, source, dotted)
            else:
                _screen(value, dotted, origin)
                target[key] = value
                self.origin[dotted] = origin


def _nearest_origin(origins: Mapping[str, str], dotted: str) -> str:
    """The line of ``dotted`` or of the nearest enclosing key (a key reached through an alias has none)."""
    probe = dotted
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe.rpartition(".")[0]
    return origins.get("", "?")


def _screen(value: Any, dotted: str, source: str) -> None:
    """Refuse what no setting can hold before anything walks it: nesting deeper than ``MAX_DEPTH``
    (a recursion crash later) and numbers too long to convert. Iterative; shared (aliased) parts
    are visited once, so a YAML alias bomb costs its size, not its expansion."""
    seen: set[int] = set()
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, _Unparsed):
            raise InputError(
                f"invalid setting {_shown(dotted)} = {item!r} (from {source}): far outside any valid range",
                hint="settings hold numbers of at most 19 digits",
            )
        if isinstance(item, (bytes, set, frozenset)):  # YAML !!binary, !!set: no setting holds them
            kind = "binary data (!!binary)" if isinstance(item, bytes) else "an unordered set (!!set)"
            raise InputError(
                f"invalid setting {_shown(dotted)} (from {source}): {kind} is no setting value",
                hint="write text as plain text and several values as a list in order, e.g. [384, 128]",
            )
        if isinstance(item, (str, int, float, bool)) or item is None:
            continue
        if depth >= MAX_DEPTH:
            raise InputError(
                f"invalid setting {_shown(dotted)} (from {source}): nested more than {MAX_DEPTH} levels deep",
                hint="settings are numbers, strings, or short lists of them",
            )
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, Mapping):
            stack.extend((part, depth + 1) for pair in item.items() for part in pair)
        elif isinstance(item, (list, tuple)):
            stack.extend((part, depth + 1) for part in item)


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


def _shown(text: Any, limit: int = 120) -> str:
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


# --------------------------------------------------------------------------------------------
# YAML: a safe loader bounded in depth, aliases and number length, that refuses duplicate keys.


class _YamlRefused(Exception):
    """A YAML document refused for its shape (not its syntax); ``line`` is 1-based or None."""

    def __init__(self, message: str, line: int | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.hint = hint


class _SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits: nesting (its composer recurses once per level), aliases
    (an alias bomb expands to billions of items) and number length (Python refuses to convert an
    integer of more than 4,300 digits; a long base-60 number takes minutes)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]  # noqa: ANN001
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > _MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _YamlRefused(f"more than {_MAX_ALIASES} YAML aliases (an alias bomb?)", mark.line + 1,
                                   hint="write the values out")
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _YamlRefused(f"YAML nested more than {MAX_DEPTH} levels deep", mark.line + 1,
                                   hint="settings are sections of keys holding numbers, strings or short lists")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node):  # type: ignore[no-untyped-def]  # noqa: ANN001
        if len(node.value) > _MAX_NUMBER_CHARS:
            return _Unparsed(node.value)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):  # type: ignore[no-untyped-def]  # noqa: ANN001
        if len(node.value) > _MAX_NUMBER_CHARS:
            return _Unparsed(node.value)
        return super().construct_yaml_float(node)


_SettingsLoader.add_constructor("tag:yaml.org,2002:int", _SettingsLoader.construct_yaml_int)
_SettingsLoader.add_constructor("tag:yaml.org,2002:float", _SettingsLoader.construct_yaml_float)

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _key_lines(root: yaml.Node | None) -> dict[str, int]:
    """Dotted key -> 1-based line, refusing a key written twice in one mapping (PyYAML would keep
    the last silently). Each node is visited once (aliases share nodes)."""
    lines: dict[str, int] = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")] if root is not None else []
    while stack:
        node, prefix = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, prefix) for child in node.value)
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                stack.append((value_node, prefix))
                continue
            if isinstance(key_node, yaml.ScalarNode):
                dotted = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                marker = (key_node.tag, key_node.value)
                if marker in first:
                    raise _YamlRefused(
                        f"duplicate key {_shown(dotted)!r} at lines {first[marker]} and {line}", line,
                        hint="a key may appear once in a mapping; keep the value you mean",
                    )
                first[marker] = line
                lines.setdefault(dotted, line)
                stack.append((value_node, dotted))
    return lines


def _load_yaml(text: str) -> tuple[Any, dict[str, int]]:
    """One YAML document -> (data, key lines); raises yaml.YAMLError or _YamlRefused."""
    loader = _SettingsLoader(text)
    try:
        root = loader.get_single_node()
        lines = _key_lines(root)
        data = loader.construct_document(root) if root is not None else None
    finally:
        loader.dispose()
    return data, lines


def _parse_scalar(text: str, source: str) -> Any:
    """Type a command-line or environment value the way YAML would ('2e-5' stays a string: pydantic
    coerces); text that is not YAML stays text, but a value YAML refuses for its shape is an error."""
    if not text.strip():
        return text
    try:
        return _load_yaml(text)[0]
    except _YamlRefused as exc:
        raise InputError(f"{source}: {exc.message}", hint=exc.hint) from None
    except (yaml.YAMLError, ValueError, TypeError):
        return text


def _read_config_text(path: Path) -> str:
    """The text of a settings file: a regular file (a FIFO would block, a device never end) of at
    most 1 MiB, in UTF-8."""
    shown = _shown(path, 300)
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
    if info.st_size > _MAX_CONFIG_BYTES:
        raise InputError(f"config file {shown} is larger than 1 MiB; settings files are small YAML mappings")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise InputError(f"config file {shown} cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):  # replaced between the checks
            raise InputError(f"config file {shown} is not a regular file", hint="pass a YAML file to --config")
        try:
            raw = handle.read(_MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise InputError(f"config file {shown} cannot be read: {exc.strerror}") from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise InputError(f"config file {shown} is larger than 1 MiB; settings files are small YAML mappings")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"config file {shown} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_yaml_file(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Load a settings file safely; returns the data and the line of each dotted key."""
    path = Path(path)
    text = _read_config_text(path)
    shown = _shown(path, 300)
    try:
        data, lines = _load_yaml(text)
    except _YamlRefused as exc:
        where = f":{exc.line}" if exc.line else ""
        raise InputError(f"{shown}{where}: {exc.message}", hint=exc.hint) from None
    except yaml.composer.ComposerError as exc:
        if "single document" not in str(exc.context):
            raise InputError(f"{shown}: invalid YAML: {_shown(exc, 300)}") from None
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise InputError(f"{shown}:{line}: a second YAML document starts here; a settings file holds one",
                         hint="remove the '---' and merge the documents into one mapping") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{shown}:{where} invalid YAML: {_shown(problem, 300)}") from None
    except (ValueError, TypeError) as exc:  # a constructor PyYAML does not guard (e.g. a bad !!timestamp)
        raise InputError(f"{shown}: invalid YAML value: {_shown(exc, 300)}") from None
    if data is None:
        if text.strip():  # comments only: a file that sets nothing
            return {}, {}
        raise InputError(f"config file {shown} is empty",
                         hint="write a YAML mapping of sections (e.g. optim: {lr: 2.0e-5}), or leave out --config")
    if not isinstance(data, dict):
        raise InputError(f"{shown}: expected a mapping of sections (data:, model:, ...), got {type(data).__name__}")
    bad = next((key for key in data if not isinstance(key, str)), None)
    if bad is not None:
        raise InputError(f"{shown}:{lines.get(str(bad), '?')}: key {_short_repr(bad)} is not a section name",
                         hint=f"sections are {', '.join(Settings.model_fields)}")
    return data, lines


def _env_overrides(environ: Mapping[str, str]) -> dict[str, tuple[Any, str]]:
    found: dict[str, tuple[Any, str]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX):]:
            continue
        dotted = ".".join(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        source = f"environment {_shown(name)}"
        found[dotted] = (_parse_scalar(raw, source), source)
    return found


def parse_set(item: str) -> tuple[str, Any]:
    """Split one ``section.key=value`` override."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"--set {_shown(item)!r}: expected section.key=value, e.g. --set optim.lr=2e-5")
    return key, _parse_scalar(value, f"--set {_shown(item)}")


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
            shown = _shown(config, 300)
            origins = {key: f"{shown}:{line}" for key, line in lines.items()}
            origins[""] = shown
            layers.merge(data, origins)
    for dotted, (value, source) in _env_overrides(os.environ if environ is None else environ).items():
        layers.merge(_nest(dotted, value), source)
    for item in sets:
        dotted, value = parse_set(item)
        layers.merge(_nest(dotted, value), f"--set {_shown(item)}")
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
        known = _known_keys(parent)
        hint = f"; known keys in {parent or 'the top level'}: {', '.join(known)}" if known else ""
        if "." in loc[-1]:
            hint += "; write nested keys as sections (optim: {lr: ...}), not with dots"
        return f"unknown setting {_short_repr(dotted)} (from {source}){hint}"
    value = error.get("input")
    if value is None and _is_section(dotted):
        return f"section {dotted} is empty (from {source}): give it keys, or leave it out"
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    shown = f" = {_short_repr(value)}" if not isinstance(value, dict) else ""
    return f"invalid setting {_shown(dotted)}{shown} (from {source}): {message}"


def _describe_inconsistent(cause: Inconsistent, section: str, layers: _Layers) -> str:
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
    return (f"invalid setting {primary} = {_short_repr(values[primary])} (from {origin(primary) or 'defaults'}): "
            f"{cause.reason}")


class _BoundedRepr(reprlib.Repr):
    """reprlib with integers bounded too (``repr`` of an integer of over 4,300 digits raises)."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)


def _short_repr(value: Any) -> str:
    """A bounded repr: a value built from YAML aliases can expand to billions of items."""
    short = _BoundedRepr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxstring, short.maxother = 3, 6, 6, 80, 80
    short.maxdict, short.maxset, short.maxfrozenset = 6, 6, 6
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
    path = Path(run_dir) / SETTINGS_FILE
    if not path.is_file():
        raise InputError(f"{run_dir} has no config.yaml; is it a run folder made by `personsearch train`?")
    return resolve_settings(config=path, environ={})
