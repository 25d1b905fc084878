"""Where training stands: the counters and metrics a checkpoint records and a resume restores."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainingProgress:
    """``epoch`` and ``batch_in_epoch`` say where a resumed run would continue: the epoch (0-based)
    and how many of its batches have had their optimizer step. ``best`` is the best evaluation so
    far (with its ``epoch``), ``last`` the latest one."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    best: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    skipped_images: int = 0

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, batches of it done): compared to where the last checkpoint was saved."""
        return self.epoch, self.batch_in_epoch
