"""What training tells its caller: a report after each step, hooks to draw progress, the result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StepReport:
    """One optimizer step as progress displays show it (``epoch`` 0-based, ``batch`` 1-based)."""

    epoch: int
    step: int
    batch: int
    batches: int
    lr: float
    values: dict[str, float]
    samples_per_s: float
    epochs: int = 0  # the run's total (train.epochs)


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
    """What train() returns: how far it got, why it stopped, the metrics and the trained model."""

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
