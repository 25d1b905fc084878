"""One epoch of optimizer steps.

Every random choice is a function of (seed, epoch, position): the epoch's sample order, each
sample's augmentation and each step's masking draw. No RNG state has to be carried across a
checkpoint, so an epoch resumed at any batch continues exactly as it would have run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from personsearch.accel import autocast
from personsearch.data.datasets import collate_skipping
from personsearch.engine import dist as distributed
from personsearch.engine.metrics_log import MetricsLog
from personsearch.engine.progress import TrainingProgress
from personsearch.engine.reports import StepReport, TrainCallbacks
from personsearch.engine.setup import TrainingSetup
from personsearch.engine.stopping import Budget, StopSignals, StopTraining, ignore_interrupts
from personsearch.errors import RunFailure

_MIX = 0x9E3779B97F4A7C15


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (splitmix64 over the parts)."""
    value = 0
    for part in parts:
        value = (value ^ (int(part) + _MIX + (value << 6) + (value >> 2))) & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is loaded under its own RNG seed: augmentation
    then depends on the sample's place in the epoch, not on worker count or resume point."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        torch.manual_seed(seed)
        random.seed(seed)
        return self.dataset[index]


def epoch_batches(sampler: Any, epoch: int, batch_size: int) -> list[list[int]]:
    """This rank's batches (lists of dataset indices) for one epoch."""
    sampler.set_epoch(epoch)
    order = list(iter(sampler))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def non_finite_term(outputs: dict[str, Any]) -> str | None:
    """The first loss term that is NaN or infinite (a named term before the total), as ``name = value``."""
    for name, value in outputs.items():
        if name.endswith("loss") and isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
            if name != "loss":
                return f"{name} = {float(value.detach())}"
    loss = outputs.get("loss")
    if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
        return f"loss = {float(loss.detach())}"
    return None


class EpochRunner:
    """Runs the steps of an epoch from where ``progress`` says it stands, updating ``progress`` after
    each step and raising StopTraining at the first step after which the budget is spent or a
    signal asked to stop. ``to_device`` moves a batch onto the device (the trainer passes its own,
    which tests replace to interrupt training at a chosen step)."""

    def __init__(self, setup: TrainingSetup, trained: torch.nn.Module, sampler: Any, metrics: MetricsLog,
                 callbacks: TrainCallbacks, budget: Budget, signals: StopSignals,
                 to_device: Callable[[dict[str, Any], torch.device], dict[str, Any]] = batch_to_device) -> None:
        self.setup = setup
        self.trained = trained
        self.sampler = sampler
        self.samples = SeededSamples(setup.train_set)
        self.metrics = metrics
        self.callbacks = callbacks
        self.budget = budget
        self.signals = signals
        self.to_device = to_device
        self.division = None
        if setup.settings.train.ccd:
            from personsearch.engine.ccd_epoch import EpochDivision

            self.division = EpochDivision(setup)

    def run(self, epoch: int, progress: TrainingProgress) -> None:
        """The steps of ``epoch`` (0-based) from batch ``progress.batch_in_epoch`` on."""
        setup = self.setup
        batches = epoch_batches(self.sampler, epoch, setup.per_rank_batch)
        first = progress.batch_in_epoch
        loader = self._loader(epoch, batches, first)
        weights = None
        if self.division is not None:  # the epoch's own batches, from its first, before any step
            weights = self.division.weights(epoch, lambda: (self.to_device(b, setup.device)
                                                            for b in self._loader(epoch, batches, 0)))
        if self.callbacks.on_epoch_start:
            self.callbacks.on_epoch_start(epoch, len(batches), first)
        self.trained.train()
        tick, seen, steps_before = time.monotonic(), 0, progress.step
        for offset, batch in enumerate(loader):
            batch_index = first + offset
            progress.skipped_images += int(batch.pop("skipped", 0))
            if "images" not in batch or batch["images"].shape[0] == 0:  # every image unreadable
                continue
            batch = self.to_device(batch, setup.device)
            if weights is not None:
                batch["pair_weights"] = weights[batch["index"].reshape(-1).cpu()].to(setup.device)
            outputs = self._step(batch, epoch, progress.step)
            progress.step += 1
            progress.epoch, progress.batch_in_epoch = epoch, batch_index + 1
            seen += batch["images"].shape[0]
            values = {k: float(v.detach()) for k, v in outputs.items()
                      if isinstance(v, torch.Tensor) and v.dim() == 0}
            rate = seen * setup.info.world_size / max(time.monotonic() - tick, 1e-9)
            lr = float(setup.optimizer.param_groups[0]["lr"])
            report = StepReport(epoch, progress.step, batch_index + 1, len(batches), lr, values, rate,
                                self.setup.settings.train.epochs)
            if self.callbacks.on_step:
                self.callbacks.on_step(report)
            self.metrics.step(report, progress.skipped_images)
            reason = self.budget.stop_reason(progress.step, self.signals.received is not None)
            if distributed.broadcast_flag(reason is not None, setup.info):
                raise StopTraining(reason or "stopped on another rank")
        if progress.step == steps_before and first < len(batches):
            raise RunFailure(f"no training image of epoch {epoch + 1} could be read ({progress.skipped_images} "
                             "captions skipped so far)", hint=f"check the image folder {setup.prepared.raw_root}")

    def _loader(self, epoch: int, batches: list[list[int]], first: int) -> DataLoader:
        """The epoch's batches from ``first`` on, each sample keyed with its own augmentation seed."""
        setup = self.setup
        seed, size = setup.settings.runtime.seed, setup.per_rank_batch
        keys = [[(index, derive_seed(seed, epoch, b * size + j, 2)) for j, index in enumerate(batch)]
                for b, batch in enumerate(batches)]
        return DataLoader(self.samples, batch_sampler=keys[first:], num_workers=setup.settings.data.workers,
                          collate_fn=collate_skipping, persistent_workers=False, worker_init_fn=ignore_interrupts,
                          pin_memory=setup.device.type == "cuda")

    def _step(self, batch: dict[str, Any], epoch: int, step: int) -> dict[str, Any]:
        """One optimizer step (the ``step + 1``-th); its masking draw seeded by (seed, step).
        A non-finite loss on any rank stops training before the weights change."""
        setup = self.setup
        device, precision, optimizer, scaler = setup.device, setup.precision, setup.optimizer, setup.scaler
        generator = torch.Generator(device=device).manual_seed(derive_seed(setup.settings.runtime.seed, step, 3))
        with autocast(precision, device):
            outputs = self.trained(batch, generator=generator)
        loss = outputs["loss"]
        bad = non_finite_term(outputs)
        if distributed.broadcast_flag(bad is not None, setup.info):
            raise RunFailure(
                f"non-finite loss at step {step + 1} (epoch {epoch + 1}): {bad or 'on another rank'}; "
                "training stopped, the last good checkpoint is kept",
                hint="lower optim.lr, use --precision fp32, or check the data")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if setup.settings.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(setup.model.parameters(), setup.settings.optim.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return outputs
