"""A synthetic pedestrian dataset drawn on the fly: stylised people with known attributes and
human-like captions, in the CUHK-PEDES raw layout, so every verb runs with no download."""

from personsearch.data.synthetic.attribute_files import (
    ATTRIBUTES_FILE,
    SYNTHETIC_LABEL,
    attributes_under,
    find_synthetic_root,
    is_synthetic_raw,
    load_attributes,
)
from personsearch.data.synthetic.attributes import (
    ATTRIBUTE_NAMES,
    VERBALISATIONS,
    sample_identities,
    visible_attributes,
    words_for,
)
from personsearch.data.synthetic.captioner import caption_pair, tokenize_caption, write_caption
from personsearch.data.synthetic.queries import (
    matches,
    matching_in_top_k,
    parse_query,
    phrase_query,
    precision_at_k,
    queries_from_gallery,
    query_combinations,
)
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
    "ATTRIBUTES_FILE",
    "ATTRIBUTE_NAMES",
    "IMAGE_SIZE",
    "SYNTHETIC_KIND",
    "SYNTHETIC_LABEL",
    "VERBALISATIONS",
    "RenderedImage",
    "attributes_under",
    "caption_pair",
    "check_raw_target",
    "encode_jpeg",
    "find_synthetic_root",
    "generate_raw_dataset",
    "is_legacy_synthetic",
    "is_synthetic_raw",
    "load_attributes",
    "matches",
    "matching_in_top_k",
    "parse_query",
    "phrase_query",
    "precision_at_k",
    "queries_from_gallery",
    "query_combinations",
    "render_person",
    "sample_identities",
    "split_sizes",
    "tokenize_caption",
    "visible_attributes",
    "words_for",
    "write_caption",
    "write_preview",
]
