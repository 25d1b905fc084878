"""Run folders, the one home of everything about them: the layout (``layout``), starting,
resuming and rolling back a run under its lock (``lifecycle``), and the one way to get a trained
model from a folder (``trained.load_trained``)."""

from personsearch.runs.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    DEMO_KIND,
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
from personsearch.runs.trained import TrainedModel, irra_settings, load_trained, load_weights, model_fingerprint
from personsearch.runs.training_data import (
    TRAIN_IMAGES_FILE,
    VOCABULARY_FILE,
    knows_query,
    record_training_data,
    run_training_images,
    run_vocabulary,
    split_image_keys,
)

__all__ = [
    "TRAIN_IMAGES_FILE", "VOCABULARY_FILE", "knows_query", "load_weights", "record_training_data",
    "run_training_images",
    "run_vocabulary", "split_image_keys",
    "CHECKPOINT_DIR", "CONFIG_FILE", "DEMO_KIND", "INDEX_DIR", "IRRA_CONFIG", "IRRA_WEIGHTS", "LOCK_FILE",
    "LOGGER_NAME",
    "LOG_FILE", "METRICS_FILE", "RUN_KIND", "TrainedModel", "append_metrics", "check_new_run_dir",
    "check_outside_inputs", "check_run_files", "checkpoint_dir", "close_run_log", "create_run", "find_run",
    "held_run", "irra_settings", "is_irra_run", "is_run", "latest_run", "load_trained", "model_fingerprint",
    "new_run_name", "plan_run", "load_run_settings", "read_weights_meta", "setup_logging",
]
