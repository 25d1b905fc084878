"""What one call of train() builds before its first step: device and processes, the training data,
the model with its optimizer and schedule. Inputs that cannot work are refused here, before any
training, with the setting to change."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from personsearch.accel import check_precision, resolve_device
from personsearch.engine import dist as distributed
from personsearch.engine.ccd_epoch import check_ccd
from personsearch.engine.optim import build_optimizer, build_scheduler
from personsearch.engine.splits import check_eval_split, selection_split
from personsearch.errors import InputError
from personsearch.runs import check_outside_inputs, check_run_files, record_training_data
from personsearch.settings import Settings


@dataclass
class TrainingSetup:
    """The pieces built for one call of train(), shared by the epoch, the evaluation and the loop."""

    settings: Settings
    run_dir: Path
    device: torch.device
    info: distributed.DistInfo
    prepared: Any  # PreparedDataset
    train_set: Any  # TrainCaptions
    per_rank_batch: int
    selected_on: str  # the split each epoch is evaluated on to pick the best checkpoint
    model: Any  # IRRA, unwrapped
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None

    @property
    def precision(self) -> str:
        return self.settings.runtime.precision


def build_setup(settings: Settings, data: str | Path, run_dir: Path, resume: bool) -> TrainingSetup:
    """Everything training needs, in the order that keeps the random draws of model initialisation
    a function of ``runtime.seed`` alone (the run's config.yaml is written by ``runs.held_run``)."""
    from personsearch.data.attribute_labels import attribute_labels
    from personsearch.data.datasets import TrainCaptions
    from personsearch.data.prepared import PreparedDataset
    from personsearch.data.transforms import build_transform
    from personsearch.model.irra import build_irra

    device = resolve_device(settings.runtime.device)
    precision = settings.runtime.precision
    check_precision(precision, device)
    check_ccd(settings)
    info = distributed.init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)

    prepared = PreparedDataset.load(data)
    if info.is_main:
        check_outside_inputs(run_dir, prepared.path, prepared.raw_root)
        if resume:
            check_run_files(run_dir)
        else:  # what the run learns from: flags unknown query words, refuses evaluating on its own images
            record_training_data(run_dir, prepared)
    transform = build_transform(settings.model.image_size, train=True, augment=settings.data.augment)
    labels = None
    if "attr" in settings.loss.enabled:
        labels = attribute_labels(prepared)
        if labels is None:
            raise InputError(f"loss.names = {settings.loss.names!r}: the attribute loss (attr) needs per-image "
                             f"attributes, and {prepared.name} records none",
                             hint="drop attr from loss.names (only the synthetic set records attributes)")
    train_set = TrainCaptions(prepared, transform, attribute_targets=labels.targets if labels else None)
    per_rank_batch = settings.train.batch_size // info.world_size
    if per_rank_batch < 1:
        raise InputError(f"train.batch_size = {settings.train.batch_size} is smaller than the number of "
                         f"processes ({info.world_size})")
    if len(train_set) < settings.train.batch_size:
        raise InputError(f"train.batch_size = {settings.train.batch_size} is larger than the training set "
                         f"({len(train_set)} captions)", hint="lower --set train.batch_size")

    selected_on = selection_split(prepared, settings)
    if info.is_main:
        check_eval_split(prepared, settings.eval.split)
    torch.manual_seed(settings.runtime.seed)
    # Under DDP with loss.gather the matching losses see the global batch (features gathered with
    # gradients); otherwise per-rank losses, as IRRA computes them.
    gather = partial(distributed.all_gather_with_grad, info=info) if info.enabled and settings.loss.gather else None
    model = build_irra(settings, num_classes=prepared.num_train_ids, freeze_logit_scale=True, feature_gather=gather,
                       num_attributes=len(labels) if labels else 0)
    model.to(device)
    optimizer = build_optimizer(model, settings.optim)
    scheduler = build_scheduler(optimizer, settings.schedule, settings.train.epochs)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return TrainingSetup(settings, run_dir, device, info, prepared, train_set, per_rank_batch, selected_on, model,
                         optimizer, scheduler, scaler)


def wrap_for_ranks(setup: TrainingSetup) -> torch.nn.Module:
    """The module the steps run: the model itself, or under DDP its DistributedDataParallel wrapper
    (built after a resume has loaded the weights)."""
    if not setup.info.enabled:
        return setup.model
    device = setup.device
    return torch.nn.parallel.DistributedDataParallel(
        setup.model, device_ids=[device.index] if device.type == "cuda" else None)


def build_train_sampler(setup: TrainingSetup) -> Any:
    """This rank's share of each epoch's sample order (data.sampler), seeded by runtime.seed."""
    from personsearch.data.samplers import build_sampler

    settings, info = setup.settings, setup.info
    try:
        train_set = setup.train_set
        tokens = train_set.prepared.tokens[train_set.caption_rows] if settings.data.sampler == "similar" else None
        return build_sampler(settings.data.sampler, train_set.pids, setup.per_rank_batch,
                             settings.data.num_instances, seed=settings.runtime.seed,
                             num_replicas=info.world_size, rank=info.rank, tokens=tokens,
                             group=settings.data.similar_group, words=settings.data.similar_words)
    except ValueError as exc:
        raise InputError(f"data.sampler = {settings.data.sampler!r}: {exc}") from None
