"""Datasets: the benchmark readers, the prepared-dataset files, torch datasets and samplers.

Names are imported on first use, so ``import personsearch.data`` (and the prepare verb) does not
load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FORMATS": "formats",
    "FormatSpec": "formats",
    "Problem": "formats",
    "resolve_format": "formats",
    "PrepareReport": "prepared",
    "PreparedDataset": "prepared",
    "Entry": "prepared",
    "prepare_dataset": "prepared",
    "TrainCaptions": "datasets",
    "GalleryImages": "datasets",
    "QueryCaptions": "datasets",
    "collate_skipping": "datasets",
    "ImageFiles": "datasets",
    "Unreadable": "datasets",
    "IMAGE_SUFFIXES": "images",
    "discover_images": "images",
    "build_transform": "transforms",
    "load_rgb": "transforms",
    "ImageLoadError": "transforms",
    "IdentitySampler": "samplers",
    "ShuffleSampler": "samplers",
    "SimilarCaptionSampler": "samplers",
    "build_sampler": "samplers",
    "AttributeLabels": "attribute_labels",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'personsearch.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"personsearch.data.{module}"), name)
