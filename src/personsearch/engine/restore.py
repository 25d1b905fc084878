"""Resuming a run: check that its checkpoint belongs to these settings and this data, then load
weights, optimizer, schedule and counters. Everything is checked and loaded before the run is
touched, so a refused resume changes nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from personsearch.engine.metrics_log import forget_metrics_after
from personsearch.engine.progress import TrainingProgress
from personsearch.engine.state import Checkpoint, load_training_state
from personsearch.errors import InputError
from personsearch.runs import METRICS_FILE, checkpoint_dir, load_run_settings, setup_logging
from personsearch.runs.lifecycle import save_run_settings
from personsearch.settings import Settings

log = logging.getLogger("personsearch.engine.train")  # the trainer's name in log.txt

#: Settings a resumed run may change: budgets, logging, evaluation and where it runs. Anything else
#: would make the saved weights, optimizer or data order mean something else.
RESUMABLE_CHANGES = (
    "train.epochs", "train.max_steps", "train.max_minutes", "train.log_period", "train.eval_period",
    "eval.", "index.", "runtime.device", "runtime.precision", "runtime.compile", "runtime.output_dir", "data.workers",
    "data.skip_corrupt", "data.root",
)

#: Evaluation settings a resumed run may not change: the best so far was chosen under them.
FIXED_EVAL = ("eval.select_on", "eval.unmatched")


def resume_conflicts(saved: Settings, settings: Settings) -> list[str]:
    """Settings that differ from the run's saved ones in a way resuming cannot honour."""
    old, new = _flatten(saved.model_dump(mode="json")), _flatten(settings.model_dump(mode="json"))
    return [f"{key}: {old.get(key)!r} in the run, {new.get(key)!r} now" for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key) and (key in FIXED_EVAL or not key.startswith(RESUMABLE_CHANGES))]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def restore_run(run_dir: Path, settings: Settings, prepared: Any, model: Any, optimizer: Any, scheduler: Any,
                is_main: bool) -> tuple[TrainingProgress, Checkpoint | None]:
    """Load the run's newest checkpoint into ``model``, ``optimizer`` and ``scheduler``; then (main
    process) log to the run, save these settings as its config and drop metric lines logged after
    the checkpoint. Returns where training stands and the checkpoint still to be evaluated, if the
    run stopped while evaluating it. What the resume will do is logged (``describe_resume``)."""
    checkpoint = check_resume(run_dir, settings, prepared)
    progress, pending = TrainingProgress(), None
    if checkpoint is None:
        log.warning("no complete checkpoint in %s yet; starting from the beginning", run_dir)
    else:
        progress = load_checkpoint_into(run_dir, checkpoint, model, optimizer, scheduler)
        if checkpoint.meta.get("pending_eval") is True and progress.batch_in_epoch == 0 and progress.epoch > 0:
            pending = checkpoint
        log.info("%s", describe_resume(run_dir, progress, settings.train.epochs, pending is not None))
    if is_main:
        setup_logging(run_dir)
        save_run_settings(run_dir, settings)  # without this invocation's budgets
        if checkpoint is not None:
            forget_metrics_after(run_dir / METRICS_FILE, progress.step)
    return progress, pending


def describe_resume(run_dir: Path, progress: TrainingProgress, epochs: int, pending: bool) -> str:
    """What resuming a run at ``progress`` will do, in words: continue at an epoch, only evaluate its
    last checkpoint, or nothing, because it has already trained all ``epochs``."""
    if progress.epoch >= epochs and progress.batch_in_epoch == 0:
        if pending:
            return (f"run {run_dir} has trained its {progress.epoch} epochs; evaluating its last checkpoint, "
                    "whose evaluation was cut short")
        return (f"run {run_dir} already finished its {progress.epoch} epochs; nothing to train (its selected "
                "checkpoint is reported again; raise --epochs to train on)")
    return f"resuming {run_dir} at epoch {progress.epoch + 1} of {epochs}, step {progress.step}"


def check_resume(run_dir: Path, settings: Settings, prepared: Any) -> Checkpoint | None:
    """The checkpoint to resume from, after checking it belongs to these settings and this data."""
    saved = load_run_settings(run_dir)
    conflicts = resume_conflicts(saved, settings)
    if conflicts:
        shown = "; ".join(conflicts[:6]) + (f"; and {len(conflicts) - 6} more" if len(conflicts) > 6 else "")
        raise InputError(f"cannot resume {run_dir}: settings differ from the run's ({shown})",
                         hint="resume with the run's settings, or start a new run with --name")
    checkpoint = load_training_state(run_dir)
    if checkpoint is None:
        folder = checkpoint_dir(run_dir)
        names = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
        if names:  # weights were saved but no state can be read: starting over would overwrite them
            raise InputError(f"cannot resume {run_dir}: it holds checkpoints ({', '.join(names[:4])}) but no "
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


def load_checkpoint_into(run_dir: Path, checkpoint: Checkpoint, model: Any, optimizer: Any,
                         scheduler: Any) -> TrainingProgress:
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
    return TrainingProgress(epoch=start_epoch, batch_in_epoch=batch_in_epoch, step=step, best=best, last=last,
                            skipped_images=skipped)
