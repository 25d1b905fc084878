"""Run folders, the one home of everything about them: the layout (``layout``), starting,
resuming and rolling back a run under its lock (``lifecycle``), and the one way to get a trained
model from a folder (``trained.load_trained``)."""

from personsearch.runs.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    INDEX_DIR,
    IRRA_CONFIG,
    IRRA_WEIGHTS,
    LOCK_FILE,
    LOG_FILE,
    LOGGER_NAME,
    METRICS_FILE,
    RUN_KIND,
    append_metrics,
    check_run_files,
    checkpoint_dir,
    find_run,
    is_irra_run,
    is_run,
    latest_run,
    load_run_settings,
    read_weights_meta,
)
from personsearch.runs.lifecycle import (
    check_new_run_dir,
    check_outside_inputs,
    close_run_log,
    create_run,
    held_run,
    new_run_name,
    plan_run,
    setup_logging,
)
from personsearch.runs.trained import TrainedModel, irra_settings, load_trained, model_fingerprint

__all__ = [
    "CHECKPOINT_DIR", "CONFIG_FILE", "INDEX_DIR", "IRRA_CONFIG", "IRRA_WEIGHTS", "LOCK_FILE", "LOGGER_NAME",
    "LOG_FILE", "METRICS_FILE", "RUN_KIND", "TrainedModel", "append_metrics", "check_new_run_dir",
    "check_outside_inputs", "check_run_files", "checkpoint_dir", "close_run_log", "create_run", "find_run",
    "held_run", "irra_settings", "is_irra_run", "is_run", "latest_run", "load_trained", "model_fingerprint",
    "new_run_name", "plan_run", "load_run_settings", "read_weights_meta", "setup_logging",
]
