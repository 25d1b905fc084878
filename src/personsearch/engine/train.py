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
from personsearch.engine.state import load_training_state, record_evaluation, save_training_state
from personsearch.errors import InputError, RunFailure
from personsearch.io import append_line, atomic_open, atomic_write_text, iter_jsonl
from personsearch.runs import CONFIG_FILE, METRICS_FILE, check_outside_inputs, check_run_files, setup_logging
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
    signal: int | None = None  # the signal that interrupted training (SIGINT 2, SIGTERM 15), if any
    selected_on: str = "test"  # the split each epoch was evaluated on to pick the best checkpoint
    final: dict[str, Any] = field(default_factory=dict)  # the selected checkpoint on eval.split (+ epoch, split)


class _Stop(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


#: Settings a resumed run may change: budgets, logging, evaluation and where it runs. Anything else
#: would make the saved weights, optimizer or data order mean something else.
RESUMABLE_CHANGES = (
    "train.epochs", "train.max_steps", "train.max_minutes", "train.log_period", "train.eval_period",
    "eval.", "index.", "runtime.device", "runtime.precision", "runtime.output_dir", "data.workers",
    "data.skip_corrupt", "data.root",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


#: Evaluation settings a resumed run may not change: the best so far was chosen under them.
FIXED_EVAL = ("eval.select_on", "eval.unmatched")


def resume_conflicts(saved: Settings, settings: Settings) -> list[str]:
    """Settings that differ from the run's saved ones in a way resuming cannot honour."""
    old, new = _flatten(saved.model_dump(mode="json")), _flatten(settings.model_dump(mode="json"))
    return [f"{key}: {old.get(key)!r} in the run, {new.get(key)!r} now" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key) and (key in FIXED_EVAL or not key.startswith(RESUMABLE_CHANGES))]


class _Signals:
    """SIGINT and SIGTERM ask training to stop at the next safe point (the state is saved, then the
    caller exits 130/143); a second signal stops at once. DataLoader workers forked meanwhile
    inherit the flag handler, so Ctrl-C reaching them does not kill them mid-batch."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if _main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        import os

        if os.getpid() != self._pid:
            return  # a forked worker: the main process decides
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def _pid(self) -> int:
        return self.__dict__.setdefault("_owner", __import__("os").getpid())


def _ignore_interrupts(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process (which saves and stops cleanly)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
    if info.is_main:
        check_outside_inputs(run_dir, prepared.path, prepared.raw_root)
        if resume:
            check_run_files(run_dir)
    transform = build_transform(settings.model.image_size, train=True, augment=settings.data.augment)
    train_set = TrainCaptions(prepared, transform)
    per_rank_batch = settings.train.batch_size // info.world_size
    if per_rank_batch < 1:
        raise InputError(f"train.batch_size = {settings.train.batch_size} is smaller than the number of "
                         f"processes ({info.world_size})")
    if len(train_set) < settings.train.batch_size:
        raise InputError(f"train.batch_size = {settings.train.batch_size} is larger than the training set "
                         f"({len(train_set)} captions)", hint="lower --set train.batch_size")

    selected_on = selection_split(prepared, settings)
    if info.is_main:
        _check_eval_split(prepared, settings.eval.split)
    if info.is_main and not resume and not (run_dir / CONFIG_FILE).is_file():
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
    final: dict[str, Any] = {}
    skipped_total = 0
    pending_eval = None
    if resume:
        # Everything is checked and loaded before the run is touched: a refused resume changes nothing.
        checkpoint = _check_resume(run_dir, settings, prepared)
        if checkpoint is None:
            log.warning("no complete checkpoint in %s yet; starting from the beginning", run_dir)
        else:
            (start_epoch, step, batch_in_epoch, best, last,
             skipped_total) = _load_resume_state(run_dir, checkpoint, model, optimizer, scheduler)
            if checkpoint.meta.get("pending_eval") is True and batch_in_epoch == 0 and start_epoch > 0:
                pending_eval = checkpoint
            log.info("resuming %s at epoch %d, step %d", run_dir, start_epoch + 1, step)
        if info.is_main:
            setup_logging(run_dir)
            atomic_write_text(run_dir / CONFIG_FILE, settings.to_yaml())
            if checkpoint is not None:
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
    signals = _Signals().__enter__()
    saved_at: list[tuple[int, int] | None] = [(start_epoch, batch_in_epoch) if step else None]

    def checkpoint_now(epoch: int, batch_done: int, metrics: dict[str, float], is_best: bool,
                       pending: bool = False) -> Any:
        saved_at[0] = (epoch, batch_done)
        if not info.is_main:
            return None
        meta = {
            "epoch": epoch, "step": step, "batch_in_epoch": batch_done, "metrics": metrics, "best": best,
            "scheduler": scheduler.state_dict(), "settings_hash": settings.fingerprint(),
            "tokenizer": prepared.tokenizer_fingerprint, "data": prepared.fingerprint,
            "num_classes": prepared.num_train_ids, "skipped_images": skipped_total, "pending_eval": pending,
        }
        return save_training_state(run_dir, model, optimizer, meta, best=is_best)

    def evaluate_saved(saved: Any, epoch: int) -> None:
        """Evaluate the weights just saved, then record the result beside them (a failure here
        leaves the checkpoint as it is: trained weights are never lost to an evaluation)."""
        nonlocal best
        metrics = evaluate_now(epoch)
        if saved is None or not metrics:
            return
        is_best = metrics.get("R1", -1.0) > best.get("R1", -1.0)
        if is_best:
            best = {"epoch": epoch + 1, **metrics}
        record_evaluation(run_dir, saved, metrics, best, is_best)

    def eval_tick(count: int) -> None:
        if signals.received is not None:
            raise _Stop("interrupted")
        if callbacks.eval_progress:
            callbacks.eval_progress(count)

    def guarded_eval(split: str, failure: str, hint: str) -> Any:
        """Evaluate on ``split``: an interruption stays one; any other error becomes a RunFailure that
        says the trained weights are saved."""
        try:
            return evaluate_split(model.base_model, prepared, split, settings, device=device,
                                  precision=precision, progress=eval_tick)
        except (_Stop, KeyboardInterrupt):
            raise
        except Exception as exc:
            if signals.received is not None:  # a worker hit by the same Ctrl-C: an interruption, not a failure
                raise _Stop("interrupted") from None
            detail = exc.message if isinstance(exc, InputError | RunFailure) else f"{type(exc).__name__}: {exc}"
            raise RunFailure(f"{failure}: {detail}; the trained weights are saved in {run_dir}", hint=hint) from exc

    def evaluate_now(epoch: int) -> dict[str, float]:
        nonlocal last
        if not info.is_main:
            return {}
        if callbacks.on_eval_start:
            callbacks.on_eval_start(epoch)
        result = guarded_eval(selected_on, f"evaluation on the {selected_on} split failed after epoch {epoch + 1}",
                              f"fix the cause, then `personsearch train --resume {run_dir}` evaluates and continues")
        metrics = result.t2i
        last = metrics
        unmatched = int(result.info.get("queries_without_match", 0))
        record = {"epoch": epoch + 1, "step": step, "split": selected_on, **metrics,
                  "queries_without_match": unmatched}
        append_line(run_dir / METRICS_FILE, _json(record))
        if tensorboard is not None:
            for key, value in metrics.items():
                tensorboard.add_scalar(f"eval/{key}", value, step)
        if callbacks.on_eval:
            callbacks.on_eval(epoch, {**metrics, "queries_without_match": unmatched})
        return metrics

    def report_selected() -> None:
        """The selected (best) checkpoint on eval.split: evaluated again only when it was selected on
        another split; logged as one ``selected_checkpoint`` line of metrics.jsonl."""
        nonlocal final
        if not info.is_main or not best:
            return
        report = settings.eval.split
        chosen = {"epoch": best.get("epoch"), "selected_on": selected_on, "split": report}
        if report == selected_on:
            final = {**chosen, **{k: v for k, v in best.items() if k != "epoch"}}
        else:
            from personsearch.engine.state import read_weights_meta
            from personsearch.model.weights_trust import load_safetensors

            path, meta = read_weights_meta(run_dir, "best")
            current = None if meta.get("step") == step else {k: v.detach().clone()
                                                               for k, v in model.state_dict().items()}
            try:
                if current is not None:
                    model.load_state_dict(load_safetensors(path))  # checked by read_weights_meta against best.json
                result = guarded_eval(report, f"evaluating the selected checkpoint (epoch {best.get('epoch')}) on "
                                              f"the {report} split failed",
                                      f"`personsearch eval {run_dir} --split {report}` evaluates them")
            finally:
                if current is not None:
                    model.load_state_dict(current)
            final = {**chosen, **result.t2i,
                     "queries_without_match": int(result.info.get("queries_without_match", 0))}
        append_line(run_dir / METRICS_FILE, _json({"step": step, "selected_checkpoint": final}))

    stopped = "finished"
    epoch = start_epoch
    # Where a resumed run would continue: (epoch, batches of it whose optimizer step is done).
    resume_at = (start_epoch, batch_in_epoch)
    try:
        if pending_eval is not None:  # the run stopped (or failed) while evaluating its last checkpoint
            evaluate_saved(pending_eval, start_epoch - 1)
        for epoch in range(start_epoch, settings.train.epochs):
            batches = epoch_batches(sampler, epoch, per_rank_batch)
            first = batch_in_epoch if epoch == start_epoch else 0
            keys = [[(index, derive_seed(seed, epoch, b * per_rank_batch + j, 2)) for j, index in enumerate(batch)]
                    for b, batch in enumerate(batches)]
            loader = DataLoader(loader_items, batch_sampler=keys[first:], num_workers=settings.data.workers,
                                collate_fn=collate, persistent_workers=False, worker_init_fn=_ignore_interrupts,
                                pin_memory=device.type == "cuda")
            if callbacks.on_epoch_start:
                callbacks.on_epoch_start(epoch, len(batches), first)
            trained.train()
            tick, seen, steps_before = time.monotonic(), 0, step
            for offset, batch in enumerate(loader):
                batch_index = first + offset
                skipped_total += int(batch.pop("skipped", 0))
                if "images" not in batch or batch["images"].shape[0] == 0:  # every image unreadable
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
                reason = _budget_reason(settings, step, started, budget_s, signals.received is not None)
                if distributed.broadcast_flag(reason is not None, info):
                    raise _Stop(reason or "stopped on another rank")
            if step == steps_before and first < len(batches):
                raise RunFailure(f"no training image of epoch {epoch + 1} could be read ({skipped_total} captions "
                                 "skipped so far)", hint=f"check the image folder {prepared.raw_root}")
            scheduler.step()
            batch_in_epoch = 0
            resume_at = (epoch + 1, 0)
            due = (epoch + 1) % settings.train.eval_period == 0 or epoch + 1 == settings.train.epochs
            saved = checkpoint_now(epoch + 1, 0, {}, not best, pending=due)
            if due:
                evaluate_saved(saved, epoch)
            distributed.barrier(info)
        report_selected()
    except _Stop as stop:
        stopped = stop.reason
        if stopped == "interrupted" or signals.received is not None:
            stopped = "interrupted"
            if saved_at[0] != resume_at:  # interrupted during an evaluation: its checkpoint is already saved
                checkpoint_now(*resume_at, last, False)
        else:
            saved = checkpoint_now(*resume_at, {}, not best, pending=True)
            evaluate_saved(saved, epoch)
            try:
                report_selected()
            except _Stop:
                stopped = "interrupted"
    except KeyboardInterrupt:
        stopped = "interrupted"
        if saved_at[0] != resume_at:
            checkpoint_now(*resume_at, last, False)
    finally:
        signals.__exit__()
        if tensorboard is not None:
            tensorboard.close()
        distributed.shutdown_distributed()
    epochs_done = epoch + 1 if stopped == "finished" else epoch
    received = (signals.received or int(signal.SIGINT)) if stopped == "interrupted" else None
    return TrainResult(run_dir, epochs_done, step, best, last, stopped, skipped_total, model, received,
                       selected_on, final)


def selection_split(prepared: Any, settings: Settings) -> str:
    """The split evaluated after each epoch to pick the best checkpoint (eval.select_on); ``val``
    falls back to ``test``, with a warning, where the dataset has no val split (ICFG-PEDES)."""
    wanted = settings.eval.select_on
    if wanted == "val" and not _has_split(prepared, "val"):
        log.warning("WARNING: the prepared dataset %s has no val split: the best checkpoint is selected on the "
                    "TEST split (IRRA's protocol), so its test metrics are optimistic; "
                    "set eval.select_on=test to make this choice explicit", prepared.path)
        return "test"
    _check_eval_split(prepared, wanted, setting="eval.select_on")
    return wanted


def _has_split(prepared: Any, split: str) -> bool:
    stats = prepared.statistics.get(split) if isinstance(prepared.statistics, dict) else None
    return bool(stats and stats.get("images") and stats.get("captions"))


def _check_eval_split(prepared: Any, split: str, setting: str = "eval.split") -> None:
    """Refuse before training, not after the first epoch, when the evaluation split is unusable."""
    if not _has_split(prepared, split):
        have = ", ".join(name for name, value in prepared.statistics.items() if value and value.get("images"))
        raise InputError(
            f"{setting} = {split!r}: the prepared dataset {prepared.path} has no {split} images or captions",
            hint=f"choose a split it has ({have or 'none'}) with --set {setting}=...",
        )


def _check_resume(run_dir: Path, settings: Settings, prepared: Any) -> Any:
    """The checkpoint to resume from, after checking it belongs to these settings and this data."""
    from personsearch.settings import load_run_settings

    saved = load_run_settings(run_dir)
    conflicts = resume_conflicts(saved, settings)
    if conflicts:
        shown = "; ".join(conflicts[:6]) + (f"; and {len(conflicts) - 6} more" if len(conflicts) > 6 else "")
        raise InputError(f"cannot resume {run_dir}: settings differ from the run's ({shown})",
                         hint="resume with the run's settings, or start a new run with --name")
    checkpoint = load_training_state(run_dir)
    if checkpoint is None:
        folder = run_dir / "checkpoints"
        saved = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
        if saved:  # weights were saved but no state can be read: starting over would overwrite them
            raise InputError(f"cannot resume {run_dir}: it holds checkpoints ({', '.join(saved[:4])}) but no "
                             "readable training state; the run is damaged",
                             hint="evaluate or export its weights as they are, or start a new run with --name")
        return None
    meta = checkpoint.meta
    if meta.get("num_classes") not in (None, prepared.num_train_ids):
        raise InputError(f"cannot resume {run_dir}: it was trained on {meta.get('num_classes')} identities, "
                         f"the dataset {prepared.path} has {prepared.num_train_ids}",
                         hint="resume with the prepared dataset the run was started on")
    if meta.get("data") not in (None, prepared.fingerprint):
        raise InputError(f"cannot resume {run_dir}: the dataset {prepared.path} (fingerprint {prepared.fingerprint}) "
                         f"is not the one the run was trained on ({meta.get('data')})",
                         hint="resume with the prepared dataset the run was started on")
    return checkpoint


def _load_resume_state(run_dir: Path, checkpoint: Any, model: Any, optimizer: Any, scheduler: Any) -> tuple:
    """Weights, optimizer and schedule from ``checkpoint``; one clear message when they do not fit."""
    meta = checkpoint.meta
    try:
        model.load_state_dict(checkpoint.model_state())
        optimizer.load_state_dict(checkpoint.optimizer_state(optimizer))
        scheduler.load_state_dict(meta["scheduler"])
        start_epoch, step = int(meta["epoch"]), int(meta["step"])
        batch_in_epoch = int(meta.get("batch_in_epoch", 0))
        best, last = dict(meta.get("best") or {}), dict(meta.get("metrics") or {})
        skipped = int(meta.get("skipped_images", 0))
        if min(start_epoch, step, batch_in_epoch, skipped) < 0 or max(start_epoch, step, batch_in_epoch) >= 2**53:
            raise ValueError(f"counters out of range (epoch {start_epoch}, step {step})")
        if checkpoint.path.name != f"state-{step:08d}":
            raise ValueError(f"its step {step} does not match the folder name")
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"cannot resume {run_dir}: its checkpoint {checkpoint.path} is damaged or does not match this "
            f"model ({first})",
            hint="resume with the settings the run was started with; if the checkpoint is damaged, start a new run",
        ) from None
    return start_epoch, step, batch_in_epoch, best, last, skipped


def _forget_metrics_after(path: Path, step: int) -> None:
    """Drop metric lines a killed run logged after its last checkpoint: the resumed run logs them
    again, so the file reads as one uninterrupted run. Streamed: the file may be large."""
    import json

    def step_of(row: dict[str, Any]) -> int:
        try:
            return int(row.get("step", 0))
        except (TypeError, ValueError, OverflowError):
            return 0

    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as handle:
        handle.seek(-1, 2)
        torn = handle.read(1) != b"\n"
    if not torn and all(step_of(row) <= step for row in iter_jsonl(path)):
        return
    with atomic_open(path, "w", encoding="utf-8") as out:
        for row in iter_jsonl(path):
            if step_of(row) <= step:
                out.write(json.dumps(row) + "\n")


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
