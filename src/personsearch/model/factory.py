"""The CLIP a training run starts from, as its settings say: random or pretrained.

One place decides between :func:`~personsearch.model.clip.build_clip` (``model.pretrained`` is
null: the architecture comes from ``model.arch``) and
:func:`~personsearch.model.checkpoints.load_checkpoint` (the architecture comes from the weights),
so every caller that builds a model from settings gets the same model.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from personsearch.model.checkpoints import load_checkpoint
from personsearch.model.clip import CLIP, build_clip

if TYPE_CHECKING:
    from personsearch.settings import Settings

__all__ = ["clip_from_settings"]

logger = logging.getLogger(__name__)


def clip_from_settings(settings: Settings, num_classes: int | None = None) -> CLIP:
    """A new CLIP from ``settings.model``: random when ``pretrained`` is null, else its weights.

    Pretrained weights that carry IRRA heads give only their CLIP (the heads start fresh when
    fine-tuning); ``num_classes``, the identities of the dataset to train on, only serves the note
    saying a classifier of another size is dropped.
    """
    model = settings.model
    if model.pretrained is None:
        logger.info("randomly initialised CLIP (model.pretrained is null)")
        return build_clip(
            model.arch,
            image_size=model.image_size,
            stride=model.stride,
            context_length=model.text_length,
            vocab_size=model.vocab_size,
        )
    loaded = load_checkpoint(
        model.pretrained, image_size=model.image_size, stride=model.stride, context_length=model.text_length
    )
    if loaded.heads:
        # Fine-tuning starts IRRA's heads fresh (the recipe from CLIP); a classifier of another
        # dataset could not serve anyway: its identities are not this dataset's.
        classes = loaded.num_classes
        other = classes is not None and num_classes is not None and classes != num_classes
        logger.info(
            "model.pretrained %s: only its CLIP is loaded; its heads (%s) start fresh%s",
            loaded.path, ", ".join(loaded.head_names()),
            f"; its classifier of {classes} identities is dropped (this dataset has {num_classes})" if other else "",
        )
    return loaded.clip
