"""Which split evaluates a run and which one selects its best checkpoint, checked before training."""

from __future__ import annotations

import logging
from typing import Any

from personsearch.errors import InputError
from personsearch.settings import Settings

log = logging.getLogger("personsearch.engine.train")  # the trainer's name in log.txt


def selection_split(prepared: Any, settings: Settings) -> str:
    """The split evaluated after each epoch to pick the best checkpoint (eval.select_on); ``val``
    falls back to ``test``, with a warning, where the dataset has no val split (ICFG-PEDES)."""
    wanted = settings.eval.select_on
    if wanted == "val" and not _has_split(prepared, "val"):
        log.warning("WARNING: the prepared dataset %s has no val split: the best checkpoint is selected on the "
                    "TEST split (IRRA's protocol), so its test metrics are optimistic; "
                    "set eval.select_on=test to make this choice explicit", prepared.path)
        return "test"
    check_eval_split(prepared, wanted, setting="eval.select_on")
    return wanted


def check_eval_split(prepared: Any, split: str, setting: str = "eval.split") -> None:
    """Refuse before training, not after the first epoch, when the evaluation split is unusable."""
    if not _has_split(prepared, split):
        have = ", ".join(name for name, value in prepared.statistics.items() if value and value.get("images"))
        raise InputError(
            f"{setting} = {split!r}: the prepared dataset {prepared.path} has no {split} images or captions",
            hint=f"choose a split it has ({have or 'none'}) with --set {setting}=...",
        )


def _has_split(prepared: Any, split: str) -> bool:
    stats = prepared.statistics.get(split) if isinstance(prepared.statistics, dict) else None
    return bool(stats and stats.get("images") and stats.get("captions"))
