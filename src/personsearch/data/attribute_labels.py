"""Per-image attribute labels for the optional attribute loss (``loss.names`` with ``attr``).

A dataset provides attributes when its raw folder holds the synthetic set's ``attributes.json``
(what was drawn in each image); the real benchmarks have none, and the loss is refused there.
Every ``attribute=value`` pair that occurs in the split is one label, so the labels are a
multi-hot vector per image (one value per attribute, absent values such as ``bag=none``
included: "carries no bag" is something to see too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from personsearch.data.prepared_dataset import PreparedDataset
from personsearch.errors import InputError

__all__ = ["AttributeLabels", "attribute_labels", "has_attributes"]


@dataclass(frozen=True)
class AttributeLabels:
    """``names[j]`` is ``attribute=value``; ``targets[i, j]`` is 1.0 where entry ``i`` of the
    split (in ``PreparedDataset.entries`` order) has that value."""

    names: tuple[str, ...]
    targets: np.ndarray  # float32 [entries, labels]

    def __len__(self) -> int:
        return len(self.names)


def has_attributes(prepared: PreparedDataset) -> bool:
    """Whether the dataset's raw folder records per-image attributes."""
    from personsearch.data.synthetic.attribute_files import ATTRIBUTES_FILE

    return Path(prepared.raw_root, ATTRIBUTES_FILE).is_file()


def attribute_labels(prepared: PreparedDataset, split: str = "train") -> AttributeLabels | None:
    """The multi-hot attribute labels of ``split``'s images; None when the dataset has no
    attributes. An image of the split that the attributes file does not describe: InputError."""
    from personsearch.data.synthetic.attribute_files import ATTRIBUTES_FILE, load_attributes

    if not has_attributes(prepared):
        return None
    recorded = load_attributes(prepared.raw_root)
    entries = prepared.entries(split)
    rows = []
    for entry in entries:
        attrs = recorded.get(entry.path)
        if attrs is None:
            raise InputError(
                f"{Path(prepared.raw_root, ATTRIBUTES_FILE)} has no attributes for {entry.path} ({split} split)",
                hint="draw the synthetic set again, or drop attr from loss.names",
            )
        rows.append(attrs)
    names = tuple(sorted({f"{name}={value}" for attrs in rows for name, value in attrs.items()}))
    column = {name: j for j, name in enumerate(names)}
    targets = np.zeros((len(rows), len(names)), dtype=np.float32)
    for i, attrs in enumerate(rows):
        targets[i, [column[f"{name}={value}"] for name, value in attrs.items()]] = 1.0
    return AttributeLabels(names, targets)
