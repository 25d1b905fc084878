"""The training loop: the IRRA recipe, resumable exactly, optionally distributed.

Every random choice during training is a function of (seed, epoch, position): the epoch's sample
order, each sample's augmentation and each step's masking draw. No RNG state has to be carried
across a checkpoint, so a run stopped anywhere and resumed ends with the same weights as one that
ran straight through (on the CPU; GPU kernels may add their own nondeterminism).

The pieces: :mod:`~personsearch.engine.setup` builds what training needs,
:mod:`~personsearch.engine.restore` resumes a run, :mod:`~personsearch.engine.epoch` runs one
epoch of steps, :mod:`~personsearch.engine.selection` evaluates checkpoints and keeps the best,
:mod:`~personsearch.engine.metrics_log` writes metrics.jsonl, :mod:`~personsearch.engine.stopping`
decides when to stop early. This module ties them together.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from personsearch.engine import dist as distributed
from personsearch.engine.epoch import EpochRunner, SeededSamples, derive_seed, epoch_batches
from personsearch.engine.epoch import batch_to_device as _to_device
from personsearch.engine.evaluate import evaluate_split
from personsearch.engine.metrics_log import MetricsLog
from personsearch.engine.metrics_log import forget_metrics_after as _forget_metrics_after  # noqa: F401 (tests)
from personsearch.engine.progress import TrainingProgress
from personsearch.engine.reports import StepReport, TrainCallbacks, TrainResult
from personsearch.engine.restore import FIXED_EVAL, RESUMABLE_CHANGES, restore_run, resume_conflicts
from personsearch.engine.selection import CheckpointSelection, selection_split
from personsearch.engine.setup import TrainingSetup, build_setup, build_train_sampler, wrap_for_ranks
from personsearch.engine.state import Checkpoint, save_training_state
from personsearch.engine.stopping import Budget, StopSignals, StopTraining
from personsearch.settings import Settings

__all__ = [
    "FIXED_EVAL", "RESUMABLE_CHANGES", "SeededSamples", "StepReport", "TrainCallbacks", "TrainResult",
    "TrainingLoop", "derive_seed", "epoch_batches", "resume_conflicts", "selection_split", "train",
]

# ``_to_device`` and ``evaluate_split`` are looked up here at each call of train() and handed to
# the epoch and the evaluation: tests replace them on this module to interrupt training mid-epoch
# or to fail its evaluation.


def train(
    settings: Settings,
    data: str | Path,
    run_dir: str | Path,
    resume: bool = False,
    callbacks: TrainCallbacks | None = None,
) -> TrainResult:
    """Train (or continue training) the model of ``settings`` on a prepared dataset, under the
    run's lock: a new run is created (and removed again if it fails before its first checkpoint);
    a resumed run is checked, and its checkpoint loaded, before its config.yaml is rewritten."""
    from personsearch.runs import held_run

    run_dir = Path(run_dir)
    writer = int(os.environ.get("RANK", "0")) == 0
    with held_run(settings, run_dir, new=not resume, writer=writer):
        return _train(settings, data, run_dir, resume, callbacks or TrainCallbacks())


def _train(settings: Settings, data: str | Path, run_dir: Path, resume: bool,
           callbacks: TrainCallbacks) -> TrainResult:
    setup = build_setup(settings, data, run_dir, resume)
    progress, pending = TrainingProgress(), None
    if resume:
        progress, pending = restore_run(run_dir, settings, setup.prepared, setup.model, setup.optimizer,
                                        setup.scheduler, setup.info.is_main)
    trained = wrap_for_ranks(setup)
    metrics = MetricsLog(run_dir, settings.train.log_period, enabled=setup.info.is_main)
    sampler = build_train_sampler(setup)
    budget = Budget(settings.train)
    signals = StopSignals().__enter__()
    epochs = EpochRunner(setup, trained, sampler, metrics, callbacks, budget, signals, to_device=_to_device)
    selection = CheckpointSelection(setup, metrics, callbacks, signals, evaluate=evaluate_split)
    loop = TrainingLoop(setup, progress, epochs, selection, signals)
    try:
        stopped = loop.run(pending)
    finally:
        signals.__exit__()
        metrics.close()
        distributed.shutdown_distributed()
    # Finished: every epoch done (a resumed finished run trains none, so not loop.epoch + 1).
    epochs_done = progress.epoch if stopped == "finished" else loop.epoch
    received = (signals.received or int(signal.SIGINT)) if stopped == "interrupted" else None
    return TrainResult(run_dir, epochs_done, progress.step, progress.best, progress.last, stopped,
                       progress.skipped_images, setup.model, received, setup.selected_on, loop.final)


class TrainingLoop:
    """Epochs, each ending in a checkpoint and, when due, its evaluation; then the selected
    checkpoint's report. A stop request (signal or budget) saves where training stands first, so
    ``train --resume`` continues from exactly there."""

    def __init__(self, setup: TrainingSetup, progress: TrainingProgress, epochs: EpochRunner,
                 selection: CheckpointSelection, signals: StopSignals) -> None:
        self.setup = setup
        self.progress = progress
        self.epochs = epochs
        self.selection = selection
        self.signals = signals
        self.epoch = progress.epoch  # the epoch being trained (0-based)
        self.final: dict[str, Any] = {}  # the selected checkpoint's report (TrainResult.final)
        # Where the newest checkpoint of this run stands, compared with progress.position.
        self.saved_at: tuple[int, int] | None = progress.position if progress.step else None

    def run(self, pending: Checkpoint | None = None) -> str:
        """Train to the last epoch; returns why training stopped (TrainResult.stopped)."""
        progress = self.progress
        try:
            if pending is not None:  # the run stopped (or failed) while evaluating its last checkpoint
                self.selection.evaluate_saved(pending, progress.epoch - 1, progress)
            for epoch in range(progress.epoch, self.setup.settings.train.epochs):
                self.epoch = epoch
                self.epochs.run(epoch, progress)
                self._end_epoch(epoch)
            self.final = self.selection.report_selected(progress)
            return "finished"
        except StopTraining as stop:
            return self._stopped(stop.reason)
        except KeyboardInterrupt:
            self._save_if_unsaved()
            return "interrupted"

    def _end_epoch(self, epoch: int) -> None:
        """Step the schedule, save the checkpoint and evaluate it when due (train.eval_period, and
        always after the last epoch); all ranks wait for the evaluation."""
        settings, progress = self.setup.settings, self.progress
        self.setup.scheduler.step()
        progress.epoch, progress.batch_in_epoch = epoch + 1, 0
        due = (epoch + 1) % settings.train.eval_period == 0 or epoch + 1 == settings.train.epochs
        saved = self._save({}, not progress.best, pending=due)
        if due:
            self.selection.evaluate_saved(saved, epoch, progress)
        distributed.barrier(self.setup.info)

    def _stopped(self, reason: str) -> str:
        """Save where training stands. A budget stop also evaluates that checkpoint and reports the
        selected one; an interruption does not (it resumes there)."""
        progress = self.progress
        if reason == "interrupted" or self.signals.received is not None:
            self._save_if_unsaved()
            return "interrupted"
        saved = self._save({}, not progress.best, pending=True)
        self.selection.evaluate_saved(saved, self.epoch, progress)
        try:
            self.final = self.selection.report_selected(progress)
        except StopTraining:
            return "interrupted"
        return reason

    def _save_if_unsaved(self) -> None:
        """Save the state unless the newest checkpoint already holds it (interrupted during its evaluation)."""
        if self.saved_at != self.progress.position:
            self._save(self.progress.last, False)

    def _save(self, metrics: dict[str, float], is_best: bool, pending: bool = False) -> Checkpoint | None:
        """A checkpoint of where training stands (the main process writes it; others only note it).
        ``pending``: an evaluation of these weights is still to come (a resume runs it first)."""
        setup, progress = self.setup, self.progress
        self.saved_at = progress.position
        if not setup.info.is_main:
            return None
        prepared = setup.prepared
        meta = {
            "epoch": progress.epoch, "step": progress.step, "batch_in_epoch": progress.batch_in_epoch,
            "metrics": metrics, "best": progress.best, "scheduler": setup.scheduler.state_dict(),
            "settings_hash": setup.settings.fingerprint(), "tokenizer": prepared.tokenizer_fingerprint,
            "data": prepared.fingerprint, "num_classes": prepared.num_train_ids,
            "skipped_images": progress.skipped_images, "pending_eval": pending,
        }
        return save_training_state(setup.run_dir, setup.model, setup.optimizer, meta, best=is_best)
