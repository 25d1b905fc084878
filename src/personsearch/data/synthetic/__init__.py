"""A synthetic pedestrian dataset drawn on the fly: stylised people with known attributes and
human-like captions, in the CUHK-PEDES raw layout, so every verb runs with no download."""

from personsearch.data.synthetic.attributes import (
    ATTRIBUTE_NAMES,
    VERBALISATIONS,
    sample_identities,
    visible_attributes,
    words_for,
)
from personsearch.data.synthetic.captioner import caption_pair, tokenize_caption, write_caption
from personsearch.data.synthetic.renderer import IMAGE_SIZE, RenderedImage, encode_jpeg, render_person
from personsearch.data.synthetic.writer import (
    SYNTHETIC_KIND,
    check_raw_target,
    generate_raw_dataset,
    is_legacy_synthetic,
    split_sizes,
    write_preview,
)

__all__ = [
    "ATTRIBUTE_NAMES",
    "IMAGE_SIZE",
    "VERBALISATIONS",
    "RenderedImage",
    "SYNTHETIC_KIND",
    "caption_pair",
    "check_raw_target",
    "encode_jpeg",
    "generate_raw_dataset",
    "is_legacy_synthetic",
    "render_person",
    "sample_identities",
    "split_sizes",
    "tokenize_caption",
    "visible_attributes",
    "words_for",
    "write_caption",
    "write_preview",
]
