"""The training loop: the IRRA recipe, resumable exactly, optionally distributed.

Every random choice during training is a function of (seed, epoch, position): the epoch's sample
order, each sample's augmentation and each step's masking draw. No RNG state has to be carried
across a checkpoint, so a run stopped anywhere and resumed ends with the same weights as one that
ran straight through (on the CPU; GPU kernels may add their own nondeterminism).
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from personsearch.accel import autocast, check_precision, resolve_device
from personsearch.engine import dist as distributed
from personsearch.engine.evaluate import evaluate_split
from personsearch.engine.optim import build_optimizer, build_scheduler
from personsearch.engine.state import load_training_state, save_training_state
from personsearch.errors import InputError, RunFailure
from personsearch.io import append_line, atomic_write_text, read_jsonl
from personsearch.runs import CONFIG_FILE, METRICS_FILE
from personsearch.settings import Settings

log = logging.getLogger(__name__)

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


@dataclass
class StepReport:
    epoch: int
    step: int
    batch: int
    batches: int
    lr: float
    values: dict[str, float]
    samples_per_s: float


@dataclass
class TrainCallbacks:
    """Hooks the CLI uses to draw progress; the library itself never prints."""

    on_epoch_start: Callable[[int, int, int], None] | None = None  # epoch, batches, already done
    on_step: Callable[[StepReport], None] | None = None
    on_eval_start: Callable[[int], None] | None = None
    on_eval: Callable[[int, dict[str, float]], None] | None = None
    eval_progress: Callable[[int], None] | None = None


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int
    steps: int
    best: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    stopped: str = "finished"  # finished, max_steps, max_minutes, interrupted
    skipped_images: int = 0
    model: Any = None  # the trained IRRA module (unwrapped), for Python callers


class _Stop(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def epoch_batches(sampler: Any, epoch: int, batch_size: int) -> list[list[int]]:
    """This rank's batches (lists of dataset indices) for one epoch."""
    sampler.set_epoch(epoch)
    order = list(iter(sampler))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def train(
    settings: Settings,
    data: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    callbacks: TrainCallbacks | None = None,
) -> TrainResult:
    """Train (or continue training) the model of ``settings`` on a prepared dataset."""
    from personsearch.data.datasets import TrainCaptions, collate_skipping
    from personsearch.data.prepared import PreparedDataset
    from personsearch.data.samplers import build_sampler
    from personsearch.data.transforms import build_transform
    from personsearch.model.irra import build_irra

    callbacks = callbacks or TrainCallbacks()
    run_dir = Path(run_dir)
    device = resolve_device(settings.runtime.device)
    precision = settings.runtime.precision
    check_precision(precision, device)
    info = distributed.init_distributed(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)

    prepared = PreparedDataset.load(data)
    transform = build_transform(settings.model.image_size, train=True, augment=settings.data.augment)
    train_set = TrainCaptions(prepared, transform)
    per_rank_batch = settings.train.batch_size // info.world_size
    if per_rank_batch < 1:
        raise InputError(f"train.batch_size = {settings.train.batch_size} is smaller than the number of "
                         f"processes ({info.world_size})")
    if len(train_set) < settings.train.batch_size:
        raise InputError(f"train.batch_size = {settings.train.batch_size} is larger than the training set "
                         f"({len(train_set)} captions)", hint="lower --set train.batch_size")

    if info.is_main and not (run_dir / CONFIG_FILE).is_file():
        atomic_write_text(run_dir / CONFIG_FILE, settings.to_yaml())  # every verb that takes a run reads it
    seed = settings.runtime.seed
    torch.manual_seed(seed)
    model = build_irra(settings, num_classes=prepared.num_train_ids)
    model.base_model.logit_scale.requires_grad_(False)  # IRRA uses the fixed 1/temperature
    model.to(device)
    optimizer = build_optimizer(model, settings.optim)
    scheduler = build_scheduler(optimizer, settings.schedule, settings.train.epochs)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    start_epoch, step, batch_in_epoch = 0, 0, 0
    best: dict[str, float] = {}
    last: dict[str, float] = {}
    skipped_total = 0
    if resume:
        checkpoint = load_training_state(run_dir)
        if checkpoint is None:
            log.warning("no complete checkpoint in %s yet; starting from the beginning", run_dir)
        else:
            model.load_state_dict(checkpoint.model_state())
            optimizer.load_state_dict(checkpoint.optimizer_state(optimizer))
            scheduler.load_state_dict(checkpoint.meta["scheduler"])
            start_epoch = checkpoint.epoch
            step = checkpoint.step
            batch_in_epoch = int(checkpoint.meta.get("batch_in_epoch", 0))
            best = dict(checkpoint.meta.get("best", {}))
            last = dict(checkpoint.meta.get("metrics", {}))
            skipped_total = int(checkpoint.meta.get("skipped_images", 0))
            log.info("resuming %s at epoch %d, step %d", run_dir, start_epoch + 1, step)
            if info.is_main:
                _forget_metrics_after(run_dir / METRICS_FILE, step)

    trained = model
    if info.enabled:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        if settings.loss.gather:
            model.feature_gather = lambda t: distributed.all_gather_with_grad(t, info)

    tensorboard = _tensorboard(run_dir) if info.is_main else None
    loader_items = SeededSamples(train_set)
    collate = collate_skipping
    try:
        sampler = build_sampler(settings.data.sampler, train_set.pids, per_rank_batch, settings.data.num_instances,
                                seed=seed, num_replicas=info.world_size, rank=info.rank)
    except ValueError as exc:
        raise InputError(f"data.sampler = {settings.data.sampler!r}: {exc}") from None
    started = time.monotonic()
    budget_s = settings.train.max_minutes * 60 if settings.train.max_minutes else None
    interrupted = {"flag": False}

    def _on_sigterm(*_: Any) -> None:
        interrupted["flag"] = True

    previous_term = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None

    def checkpoint_now(epoch: int, batch_done: int, metrics: dict[str, float], is_best: bool) -> None:
        if not info.is_main:
            return
        meta = {
            "epoch": epoch, "step": step, "batch_in_epoch": batch_done, "metrics": metrics, "best": best,
            "scheduler": scheduler.state_dict(), "settings_hash": settings.fingerprint(),
            "tokenizer": prepared.tokenizer_fingerprint, "data": prepared.fingerprint,
            "num_classes": prepared.num_train_ids, "skipped_images": skipped_total,
        }
        save_training_state(run_dir, model, optimizer, meta, best=is_best)

    def evaluate_now(epoch: int) -> dict[str, float]:
        nonlocal best, last
        if not info.is_main:
            return {}
        if callbacks.on_eval_start:
            callbacks.on_eval_start(epoch)
        result = evaluate_split(model.base_model, prepared, settings.eval.split, settings, device=device,
                                precision=precision, progress=callbacks.eval_progress)
        metrics = result.t2i
        last = metrics
        record = {"epoch": epoch + 1, "step": step, "split": settings.eval.split, **metrics}
        append_line(run_dir / METRICS_FILE, _json(record))
        if tensorboard is not None:
            for key, value in metrics.items():
                tensorboard.add_scalar(f"eval/{key}", value, step)
        if callbacks.on_eval:
            callbacks.on_eval(epoch, metrics)
        return metrics

    stopped = "finished"
    epoch = start_epoch
    # Where a resumed run would continue: (epoch, batches of it whose optimizer step is done).
    resume_at = (start_epoch, batch_in_epoch)
    try:
        for epoch in range(start_epoch, settings.train.epochs):
            batches = epoch_batches(sampler, epoch, per_rank_batch)
            first = batch_in_epoch if epoch == start_epoch else 0
            keys = [[(index, derive_seed(seed, epoch, b * per_rank_batch + j, 2)) for j, index in enumerate(batch)]
                    for b, batch in enumerate(batches)]
            loader = DataLoader(loader_items, batch_sampler=keys[first:], num_workers=settings.data.workers,
                                collate_fn=collate, persistent_workers=False,
                                pin_memory=device.type == "cuda")
            if callbacks.on_epoch_start:
                callbacks.on_epoch_start(epoch, len(batches), first)
            trained.train()
            tick, seen = time.monotonic(), 0
            for offset, batch in enumerate(loader):
                batch_index = first + offset
                skipped_total += int(batch.pop("skipped", 0))
                if batch["images"].shape[0] == 0:
                    continue
                batch = _to_device(batch, device)
                generator = torch.Generator(device=device).manual_seed(derive_seed(seed, step, 3))
                with autocast(precision, device):
                    outputs = trained(batch, generator=generator)
                loss = outputs["loss"]
                bad = _non_finite_term(outputs)
                if distributed.broadcast_flag(bad is not None, info):
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
                if settings.optim.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.optim.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                step += 1
                resume_at = (epoch, batch_index + 1)
                seen += batch["images"].shape[0]
                values = {k: float(v.detach()) for k, v in outputs.items()
                          if isinstance(v, torch.Tensor) and v.dim() == 0}
                rate = seen * info.world_size / max(time.monotonic() - tick, 1e-9)
                report = StepReport(epoch, step, batch_index + 1, len(batches), _current_lr(optimizer), values, rate)
                if callbacks.on_step:
                    callbacks.on_step(report)
                if info.is_main and (step % settings.train.log_period == 0):
                    append_line(run_dir / METRICS_FILE, _json({
                        "epoch": epoch + 1, "step": step, "lr": report.lr, **values,
                        "samples_per_s": round(rate, 3), "skipped_images": skipped_total}))
                    if tensorboard is not None:
                        for key, value in values.items():
                            tensorboard.add_scalar(f"train/{key}", value, step)
                        tensorboard.add_scalar("train/lr", report.lr, step)
                reason = _budget_reason(settings, step, started, budget_s, interrupted["flag"])
                if distributed.broadcast_flag(reason is not None, info):
                    raise _Stop(reason or "stopped on another rank")
            scheduler.step()
            batch_in_epoch = 0
            resume_at = (epoch + 1, 0)
            metrics: dict[str, float] = {}
            is_best = False
            if (epoch + 1) % settings.train.eval_period == 0 or epoch + 1 == settings.train.epochs:
                metrics = evaluate_now(epoch)
                is_best = bool(metrics) and metrics.get("R1", -1.0) > best.get("R1", -1.0)
                if is_best:
                    best = {"epoch": epoch + 1, **metrics}
            checkpoint_now(epoch + 1, 0, metrics, is_best or not best)
            distributed.barrier(info)
    except _Stop as stop:
        stopped = stop.reason
        metrics = evaluate_now(epoch)
        is_best = bool(metrics) and metrics.get("R1", -1.0) > best.get("R1", -1.0)
        if is_best:
            best = {"epoch": epoch + 1, **metrics}
        checkpoint_now(*resume_at, metrics, is_best or not best)
    except KeyboardInterrupt:
        stopped = "interrupted"
        checkpoint_now(*resume_at, last, False)
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if tensorboard is not None:
            tensorboard.close()
        distributed.shutdown_distributed()
    epochs_done = epoch + 1 if stopped == "finished" else epoch
    return TrainResult(run_dir, epochs_done, step, best, last, stopped, skipped_total, model)


def _forget_metrics_after(path: Path, step: int) -> None:
    """Drop metric lines a killed run logged after its last checkpoint: the resumed run logs them
    again, so the file reads as one uninterrupted run."""
    import json

    rows = read_jsonl(path)
    kept = [row for row in rows if int(row.get("step", 0)) <= step]
    if len(kept) != len(rows) or (path.is_file() and not path.read_text().endswith("\n")):
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _non_finite_term(outputs: dict[str, Any]) -> str | None:
    for name, value in outputs.items():
        if name.endswith("loss") and isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
            if name != "loss":
                return f"{name} = {float(value.detach())}"
    loss = outputs.get("loss")
    if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
        return f"loss = {float(loss.detach())}"
    return None


def _budget_reason(settings: Settings, step: int, started: float, budget_s: float | None,
                   interrupted: bool) -> str | None:
    if interrupted:
        return "interrupted"
    if settings.train.max_steps is not None and step >= settings.train.max_steps:
        return "max_steps"
    if budget_s is not None and time.monotonic() - started >= budget_s:
        return "max_minutes"
    return None


def _json(record: dict[str, Any]) -> str:
    import json

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value

    return json.dumps({k: clean(v) for k, v in record.items()})


def _tensorboard(run_dir: Path):  # type: ignore[no-untyped-def]
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
