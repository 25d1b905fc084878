"""The typed settings tree every verb shares: one pydantic section per concern, defaults = the IRRA
recipe (DESIGN.md), and the checks of settings that are each valid but do not fit together."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from personsearch.settings.fields import Beta, DeviceName, PathText, Probability, Side, Text, WholeNumber
from personsearch.settings.limits import (
    CROSS_HEAD_WIDTH,
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_PATCH,
    MAX_TEXT_LENGTH,
    MAX_WIDTH,
    MAX_WORKERS,
    SEED_MAX,
    TOKENIZER_VOCAB,
)
from personsearch.settings.printable import short_repr

LOSS_NAMES = ("sdm", "itc", "id", "mlm", "cmpm", "attr", "tal")


class Inconsistent(ValueError):
    """Settings that are each valid but do not fit together; ``values`` are the keys involved
    (relative to the section that checks them), the first one set by the user is named."""

    def __init__(self, reason: str, values: dict[str, Any]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.values = values


class Section(BaseModel):
    """A group of settings: unknown keys, NaN and infinity refused; assignments validated too."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)


class DataSettings(Section):
    """Where the prepared dataset is and how samples are drawn from it."""

    root: PathText | None = Field(
        None,
        description="prepared dataset folder (written by `personsearch prepare`); relative to the file in a settings "
        "file (a run's config.yaml records it so), else to the current folder",
    )
    augment: bool = Field(
        True, description="augmentation: pad 10 + random crop, random erasing (the flip stays either way, as IRRA)"
    )
    sampler: Literal["random", "identity", "similar"] = Field(
        "random",
        description="random batches, P identities x K (identity), or groups of identities whose captions are "
        "alike (similar: hard negatives, found by caption-token tf-idf similarity; any dataset)",
    )
    num_instances: WholeNumber = Field(
        4, ge=1, le=MAX_BATCH, description="K images per identity for the identity sampler"
    )
    similar_group: WholeNumber = Field(
        4, ge=1, le=MAX_BATCH,
        description="similar sampler: identities per group (an anchor and its most alike neighbours), one sample each",
    )
    similar_words: Literal["all", "colours"] = Field(
        "all",
        description="similar sampler: compare captions by all their words, or by their colour words only "
        "(colours: groups dressed alike, told apart by garment kinds and bags)",
    )
    workers: WholeNumber = Field(2, ge=0, le=MAX_WORKERS, description="dataloader worker processes")
    skip_corrupt: bool = Field(True, description="skip unreadable images during training (counted) instead of failing")


class ArchSettings(Section):
    """Architecture of a randomly initialised CLIP (ignored when weights are loaded: read from them)."""

    embed_dim: Annotated[WholeNumber, Field(ge=1, le=MAX_WIDTH)] = 512
    vision_width: Annotated[WholeNumber, Field(ge=1, le=MAX_WIDTH)] = 768
    vision_layers: Annotated[WholeNumber, Field(ge=1, le=MAX_LAYERS)] = 12
    vision_heads: Annotated[WholeNumber, Field(ge=1, le=MAX_HEADS)] = 12
    patch_size: Annotated[WholeNumber, Field(ge=1, le=MAX_PATCH)] = 16
    text_width: Annotated[WholeNumber, Field(ge=1, le=MAX_WIDTH)] = 512
    text_layers: Annotated[WholeNumber, Field(ge=1, le=MAX_LAYERS)] = 12
    text_heads: Annotated[WholeNumber, Field(ge=1, le=MAX_HEADS)] = 8
    stem: Literal["patch", "conv"] = Field(
        "patch",
        description="the image tower's first layer: one patch projection (OpenAI's), or conv: 3x3 stride-2 "
        "convolutions, one per halving of patch_size (a power of two; model.stride must equal it), which learn "
        "shapes from fewer images when training from scratch",
    )

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
    stride: WholeNumber = Field(
        16, ge=1, le=MAX_PATCH, description="patch stride; below the patch size the patches overlap"
    )
    temperature: float = Field(0.02, ge=1e-4, le=100, description="logit scale = 1 / temperature")
    cmt_depth: WholeNumber = Field(
        4, ge=1, le=MAX_LAYERS, description="transformer blocks in the cross-modal branch"
    )
    text_length: WholeNumber = Field(
        77, ge=3, le=MAX_TEXT_LENGTH, description="tokens per caption, SOT and EOT included (at most 77)"
    )
    vocab_size: Annotated[WholeNumber, Field(ge=TOKENIZER_VOCAB, le=1 << 20)] = Field(
        TOKENIZER_VOCAB, description="token table and MLM head rows; at least the tokenizer's 49,408 ids"
    )
    arch: ArchSettings = Field(default_factory=ArchSettings)
    tse: bool = Field(False, description="RDE's token-selection embeddings: a second embedding per image and caption "
                      "from the tokens the last block attends to; retrieval scores the mean of both cosines")
    tse_ratio: float = Field(0.3, gt=0, le=1, description="tse: share of the tokens selected (RDE's select_ratio)")
    tse_dim: WholeNumber = Field(1024, ge=2, le=1 << 16, description="tse: size of the token-selection embedding")


class LossSettings(Section):
    names: Text = Field(
        "sdm+mlm+id",
        description="enabled losses joined by '+': sdm, itc, id, mlm, cmpm, attr, tal (attr: auxiliary attribute "
        "supervision, only for a dataset that records per-image attributes, such as the synthetic set; tal: RDE's "
        "triplet alignment loss, summed over the batch's pairs as RDE does)",
    )
    sdm_weight: float = Field(1.0, ge=0, le=1e4)
    itc_weight: float = Field(1.0, ge=0, le=1e4)
    cmpm_weight: float = Field(1.0, ge=0, le=1e4)
    id_weight: float = Field(1.0, ge=0, le=1e4)
    mlm_weight: float = Field(1.0, ge=0, le=1e4)
    attr_weight: float = Field(
        1.0, ge=0, le=1e4,
        description="attr: weight of the multi-label attribute loss (binary cross-entropy of one linear head over "
        "the image and the text features, averaged over labels and both sides)",
    )
    tal_weight: float = Field(1.0, ge=0, le=1e4, description="tal: weight of RDE's triplet alignment loss")
    tal_tau: float = Field(0.015, gt=0, le=10, description="tal: temperature of the positive weights and of the "
                           "smooth hardest negative (RDE's tau)")
    tal_margin: float = Field(0.1, ge=0, le=10, description="tal: the margin (RDE's margin)")
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
            raise ValueError(f"unknown loss {short_repr(unknown[0])}; choose from {', '.join(LOSS_NAMES)}")
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
    layers: WholeNumber = Field(
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
    tse_lr: float = Field(1e-3, gt=0, le=10, description="model.tse: the token-selection heads' learning rate "
                          "(RDE's fixed 0.001, not scaled by lr)")


class ScheduleSettings(Section):
    mode: Literal["cosine", "step", "exp", "poly", "linear", "constant"] = "cosine"
    warmup_epochs: Annotated[WholeNumber, Field(ge=0, le=MAX_EPOCHS)] = 5
    warmup_factor: Probability = 0.1
    warmup_method: Literal["linear", "constant"] = "linear"
    milestones: tuple[Annotated[WholeNumber, Field(ge=0, le=MAX_EPOCHS)], ...] = Field(
        (20, 50), max_length=1000, description="step mode: epochs where the lr is multiplied by gamma (increasing)"
    )
    gamma: float = Field(0.1, gt=0, le=1, description="step and exp decay factor")
    target_lr: float = Field(0.0, ge=0, le=10)
    power: float = Field(0.9, gt=0, le=100)


class TrainSettings(Section):
    epochs: Annotated[WholeNumber, Field(ge=1, le=MAX_EPOCHS)] = 60
    batch_size: Annotated[WholeNumber, Field(ge=1, le=MAX_BATCH)] = 64
    log_period: WholeNumber = Field(100, ge=1, le=10**12, description="steps between metrics.jsonl lines")
    eval_period: WholeNumber = Field(1, ge=1, le=MAX_EPOCHS, description="epochs between evaluations")
    max_steps: Annotated[WholeNumber, Field(ge=1, le=10**12)] | None = Field(
        None, description="stop after this many optimizer steps"
    )
    max_minutes: float | None = Field(None, gt=0, le=1e8, description="stop after this wall-clock budget")
    ccd: bool = Field(False, description="RDE's consensus clean-pair division: each epoch, pairs both embeddings "
                      "find noisy are dropped from TAL (needs model.tse and tal; scikit-learn, the [rde] extra)")
    ccd_warmup: Annotated[WholeNumber, Field(ge=0, le=MAX_EPOCHS)] = Field(
        0, description="ccd: first epochs trained on every pair, undivided (RDE: 0, from pretrained CLIP; a model "
        "trained from scratch has no telling losses at first)")
    ccd_fit: Literal["auto", "fast", "thorough"] = Field(
        "auto", description="ccd: the mixture fit, RDE's two (auto: thorough on RSTPReid or above 40 % recorded noise)")


class EvalSettings(Section):
    split: Literal["test", "val"] = "test"
    batch_size: Annotated[WholeNumber, Field(ge=1, le=MAX_BATCH)] = 512
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
    shard_size: WholeNumber = Field(65536, ge=1, le=2**31 - 1, description="embeddings per index shard")
    top_k: Annotated[WholeNumber, Field(ge=1, le=10**6)] = 10
    batch_size: WholeNumber = Field(64, ge=1, le=MAX_BATCH, description="images per embedding batch")


class RuntimeSettings(Section):
    device: DeviceName = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = Field(
        False,
        description="eval and export: run the image encoder through torch.compile (inductor, freezing): ~1.2x "
        "faster on the CPU after a one-time compile of ~15-40 s, cached in the user's cache folder; needs a C++ "
        "compiler on the CPU. Training is not compiled (no gain measured on the CPU)",
    )
    seed: Annotated[WholeNumber, Field(ge=0, le=SEED_MAX)] = 0
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
            if arch.stem == "conv" and (arch.patch_size < 2 or arch.patch_size & (arch.patch_size - 1)
                                        or model.stride != arch.patch_size):
                raise Inconsistent(
                    f"model.arch.stem conv needs a patch size that is a power of two and model.stride equal to it "
                    f"(its convolutions halve the image; the patches do not overlap), not patch size "
                    f"{arch.patch_size} at stride {model.stride}",
                    {"model.arch.stem": arch.stem, "model.arch.patch_size": arch.patch_size,
                     "model.stride": model.stride},
                )
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


def is_section(dotted: str) -> bool:
    """Whether a dotted key names a section (a mapping of settings) rather than one setting."""
    return dotted in _SECTIONS


def known_keys(dotted: str) -> list[str]:
    """The keys of the section ``dotted`` ("" = the top level); [] where it is no section."""
    model: type[BaseModel] = Settings
    for part in [p for p in dotted.split(".") if p]:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)
