"""Choosing the checkpoint a run stands for: the weights of each due epoch are evaluated on the
selection split (eval.select_on) right after they are saved, the best R1 so far is kept, and the
selected checkpoint is reported on eval.split when training ends.

Weights are saved before they are evaluated, so a failed evaluation never costs trained weights:
it becomes a RunFailure that says so, and a resume evaluates the saved checkpoint first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from personsearch.engine.evaluate import evaluate_split
from personsearch.engine.metrics_log import MetricsLog
from personsearch.engine.progress import TrainingProgress
from personsearch.engine.reports import TrainCallbacks
from personsearch.engine.splits import check_eval_split, selection_split  # noqa: F401 (re-exported)
from personsearch.engine.state import Checkpoint, record_evaluation
from personsearch.engine.stopping import StopSignals, StopTraining
from personsearch.errors import InputError, RunFailure
from personsearch.model.weights_trust import load_safetensors
from personsearch.runs import read_weights_meta

if TYPE_CHECKING:
    from personsearch.engine.setup import TrainingSetup

log = logging.getLogger("personsearch.engine.train")  # the trainer's name in log.txt


def update_best(best: dict[str, float], metrics: dict[str, float], epoch: int) -> tuple[dict[str, float], bool]:
    """The best evaluation once ``metrics`` (after 0-based ``epoch``) is known, and whether it is
    the new best: a higher R1 than the best so far (any R1 beats none)."""
    if metrics.get("R1", -1.0) > best.get("R1", -1.0):
        return {"epoch": epoch + 1, **metrics}, True
    return best, False


class CheckpointSelection:
    """Evaluates saved checkpoints on the main process (other ranks skip evaluation), writes each
    result to the metrics log and beside its checkpoint, and keeps ``progress.best`` and
    ``progress.last``. ``evaluate`` is :func:`evaluate_split` unless the caller supplies another."""

    def __init__(self, setup: TrainingSetup, metrics: MetricsLog, callbacks: TrainCallbacks,
                 signals: StopSignals, evaluate: Callable[..., Any] = evaluate_split) -> None:
        self.setup = setup
        self.metrics = metrics
        self.callbacks = callbacks
        self.signals = signals
        self.evaluate = evaluate

    def evaluate_saved(self, saved: Checkpoint | None, epoch: int, progress: TrainingProgress) -> None:
        """Evaluate the weights just saved after ``epoch`` (0-based), then record the result beside
        them (a failure here leaves the checkpoint as it is)."""
        metrics = self.evaluate_epoch(epoch, progress)
        if saved is None or not metrics:
            return
        progress.best, is_best = update_best(progress.best, metrics, epoch)
        record_evaluation(self.setup.run_dir, saved, metrics, progress.best, is_best)

    def evaluate_epoch(self, epoch: int, progress: TrainingProgress) -> dict[str, float]:
        """The current weights on the selection split; {} on the ranks that do not evaluate."""
        setup = self.setup
        if not setup.info.is_main:
            return {}
        if self.callbacks.on_eval_start:
            self.callbacks.on_eval_start(epoch)
        split = setup.selected_on
        result = self._evaluate(split, f"evaluation on the {split} split failed after epoch {epoch + 1}",
                                f"fix the cause, then `personsearch train --resume {setup.run_dir}` evaluates "
                                "and continues")
        metrics = result.t2i
        progress.last = metrics
        unmatched = int(result.info.get("queries_without_match", 0))
        self.metrics.evaluation(epoch, progress.step, split, metrics, unmatched)
        if self.callbacks.on_eval:
            self.callbacks.on_eval(epoch, {**metrics, "queries_without_match": unmatched})
        return metrics

    def report_selected(self, progress: TrainingProgress) -> dict[str, Any]:
        """The selected (best) checkpoint on eval.split: evaluated again only when it was selected on
        another split; logged as one ``selected_checkpoint`` line of metrics.jsonl. {} when there
        is nothing to report (no evaluation yet, or not the main process)."""
        setup, best = self.setup, progress.best
        if not setup.info.is_main or not best:
            return {}
        report, selected_on = setup.settings.eval.split, setup.selected_on
        chosen = {"epoch": best.get("epoch"), "selected_on": selected_on, "split": report}
        if report == selected_on:
            final = {**chosen, **{k: v for k, v in best.items() if k != "epoch"}}
        else:
            model, run_dir = setup.model, setup.run_dir
            path, meta = read_weights_meta(run_dir, "best")
            current = None if meta.get("step") == progress.step else {k: v.detach().clone()
                                                                        for k, v in model.state_dict().items()}
            try:
                if current is not None:
                    model.load_state_dict(load_safetensors(path))  # checked by read_weights_meta against best.json
                result = self._evaluate(report, f"evaluating the selected checkpoint (epoch {best.get('epoch')}) "
                                                f"on the {report} split failed",
                                        f"`personsearch eval {run_dir} --split {report}` evaluates them")
            finally:
                if current is not None:
                    model.load_state_dict(current)
            final = {**chosen, **result.t2i,
                     "queries_without_match": int(result.info.get("queries_without_match", 0))}
        self.metrics.selected(progress.step, final)
        return final

    def _evaluate(self, split: str, failure: str, hint: str) -> Any:
        """Evaluate on ``split``: an interruption stays one; any other error becomes a RunFailure that
        says the trained weights are saved."""
        setup = self.setup
        try:
            return self.evaluate(setup.model.retrieval_encoder(), setup.prepared, split, setup.settings,
                                 device=setup.device, precision=setup.precision, progress=self._tick)
        except (StopTraining, KeyboardInterrupt):
            raise
        except Exception as exc:
            if self.signals.received is not None:  # a worker hit by the same Ctrl-C: an interruption, not a failure
                raise StopTraining("interrupted") from None
            detail = exc.message if isinstance(exc, InputError | RunFailure) else f"{type(exc).__name__}: {exc}"
            raise RunFailure(f"{failure}: {detail}; the trained weights are saved in {setup.run_dir}",
                             hint=hint) from exc

    def _tick(self, count: int) -> None:
        """Evaluation progress: stops at the next batch when a signal asked training to stop."""
        if self.signals.received is not None:
            raise StopTraining("interrupted")
        if self.callbacks.eval_progress:
            self.callbacks.eval_progress(count)
