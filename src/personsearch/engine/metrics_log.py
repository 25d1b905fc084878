"""The run's metrics: one JSON line per logged step, evaluation and selected checkpoint in
``metrics.jsonl``, mirrored to TensorBoard when it is installed and, as one readable line each, to
the run's ``log.txt`` (logger ``personsearch.metrics``; the CLI keeps them off the console, where
progress bars show the same numbers). Only the main process writes."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from personsearch.engine.reports import StepReport
from personsearch.io import append_line, atomic_open, iter_jsonl
from personsearch.runs import METRICS_FILE

#: The logger of the readable per-period lines (log.txt only: the CLI's console filters it out).
METRICS_LOGGER = "personsearch.metrics"
log = logging.getLogger(METRICS_LOGGER)


class MetricsLog:
    """Writes ``<run>/metrics.jsonl`` (and ``<run>/tensorboard/``); every call is a no-op when
    ``enabled`` is false, as on the non-main ranks of a distributed run."""

    def __init__(self, run_dir: Path, log_period: int, enabled: bool = True) -> None:
        self.path = run_dir / METRICS_FILE
        self.log_period = log_period
        self.enabled = enabled
        self.tensorboard = _tensorboard(run_dir) if enabled else None

    def step(self, report: StepReport, skipped_images: int) -> None:
        """Every ``log_period`` steps: the step's losses and accuracies, lr and speed."""
        if not self.enabled or report.step % self.log_period:
            return
        append_line(self.path, _json({
            "epoch": report.epoch + 1, "step": report.step, "lr": report.lr, **report.values,
            "samples_per_s": round(report.samples_per_s, 3), "skipped_images": skipped_images}))
        log.info("epoch %d step %d: %s, lr %.3g, %.1f samples/s", report.epoch + 1, report.step,
                 _readable(report.values), report.lr, report.samples_per_s)
        if self.tensorboard is not None:
            for key, value in report.values.items():
                self.tensorboard.add_scalar(f"train/{key}", value, report.step)
            self.tensorboard.add_scalar("train/lr", report.lr, report.step)

    def evaluation(self, epoch: int, step: int, split: str, metrics: dict[str, float], unmatched: int) -> None:
        """The evaluation after ``epoch`` (0-based) on ``split``."""
        if not self.enabled:
            return
        append_line(self.path, _json({"epoch": epoch + 1, "step": step, "split": split, **metrics,
                                      "queries_without_match": unmatched}))
        log.info("epoch %d evaluated on %s: %s (%d queries without a match)", epoch + 1, split,
                 _readable(metrics), unmatched)
        if self.tensorboard is not None:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(f"eval/{key}", value, step)

    def selected(self, step: int, final: dict[str, Any]) -> None:
        """The selected checkpoint's metrics on eval.split: the file's last line of a finished run."""
        if self.enabled:
            append_line(self.path, _json({"step": step, "selected_checkpoint": final}))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _readable(values: dict[str, Any]) -> str:
    """``loss 2.31, sdm_loss 1.02, mlm_acc 0.41`` (the total first, numbers only, 4 significant digits)."""
    keys = sorted(values, key=lambda key: key != "loss")
    shown = [f"{key} {values[key]:.4g}" for key in keys if isinstance(values[key], (int, float))]
    return ", ".join(shown)


def forget_metrics_after(path: Path, step: int) -> None:
    """Drop metric lines a killed run logged after its last checkpoint: the resumed run logs them
    again, so the file reads as one uninterrupted run. Streamed: the file may be large."""

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


def _json(record: dict[str, Any]) -> str:
    """One JSON line; NaN and infinities become null (JSON has no spelling for them)."""

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
