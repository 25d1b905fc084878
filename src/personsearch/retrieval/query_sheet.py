"""A query's hits as a contact sheet, marked on the synthetic set by whether each image has every
attribute the query names (its recorded attributes, read with the captioner's own vocabulary)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from personsearch.errors import InputError
from personsearch.retrieval.gallery import GalleryIndex
from personsearch.retrieval.results import QueryHit, QueryResult

log = logging.getLogger(__name__)


def image_file(index: GalleryIndex, hit: QueryHit) -> Path:
    """The absolute path of a hit's image, checked to lie inside the image root
    (``GalleryIndex.image_path``; a path leaving it raises the damaged-index InputError)."""
    return index.image_path(hit.row)


def gallery_attributes(index: GalleryIndex) -> dict[str, dict[str, str]] | None:
    """The synthetic set's recorded attributes of the images of ``index``, keyed by the index's
    image paths; None when the gallery is not drawn from the synthetic set (its image root is not
    a synthetic raw folder, its ``imgs`` or ``imgs/synthetic``). A damaged attributes.json is an
    InputError naming it."""
    from personsearch.data.synthetic.attribute_files import attributes_under

    return attributes_under(index.image_root)


def _named_and_attributes(
    index: GalleryIndex, query: str, attributes: Mapping[str, Mapping[str, str]] | None
) -> tuple[dict[str, str], Mapping[str, Mapping[str, str]]] | None:
    """The attributes ``query`` names and the gallery's attributes; None when it names none or the
    gallery is not the synthetic set."""
    from personsearch.data.synthetic.queries import parse_query

    named = parse_query(query)
    if not named:
        return None
    if attributes is None:
        attributes = gallery_attributes(index)
    return None if attributes is None else (named, attributes)


def attribute_matches(
    index: GalleryIndex, result: QueryResult, attributes: Mapping[str, Mapping[str, str]] | None = None
) -> list[bool] | None:
    """Per hit of ``result``, best first: whether its image has every attribute the query names
    (read with the synthetic vocabulary, ``personsearch.data.synthetic.parse_query``). None when
    the gallery is not the synthetic set or the query names no attribute of it. An image the
    attributes file does not list counts as not matching. ``attributes`` (``gallery_attributes``
    of the same index) saves reading the file again for each result."""
    from personsearch.data.synthetic.queries import matches

    found = _named_and_attributes(index, result.query, attributes)
    if found is None:
        return None
    named, known = found
    return [matches(named, known.get(hit.path)) for hit in result.results]


def gallery_holders(
    index: GalleryIndex, query: str, attributes: Mapping[str, Mapping[str, str]] | None = None
) -> int | None:
    """How many gallery images have every attribute ``query`` names: the most the top k can
    match, so "2 of 10" reads as a failure only when the gallery holds more than 2. None where
    ``attribute_matches`` gives None."""
    from personsearch.data.synthetic.queries import matches

    found = _named_and_attributes(index, query, attributes)
    if found is None:
        return None
    named, known = found
    return sum(matches(named, known.get(entry.path)) for entry in index.entries())


def describe_matches(flags: Sequence[bool], holders: int | None = None) -> str:
    """The words "k of N match every attribute named" for the flags of ``attribute_matches``,
    with how many the whole gallery holds when ``holders`` is given."""
    text = f"{sum(flags)} of {len(flags)} match every attribute named"
    if holders is not None:
        text += f" (the gallery holds {holders} such image{'' if holders == 1 else 's'})"
    return text


def render_query_sheet(
    index: GalleryIndex, results: Sequence[QueryResult], out_path: str | Path, caption_chars: int = 300
) -> Path:
    """A contact sheet PNG: one row per query (its text as the caption), the top-k images with
    rank and score. On a gallery of the synthetic set each image is framed green when it has every
    attribute the query names and red otherwise (``attribute_matches``), and the caption says
    "k of N match every attribute named" and which; other galleries are drawn unmarked. Returns
    ``out_path``."""
    from personsearch.data.synthetic.attribute_files import SYNTHETIC_LABEL
    from personsearch.data.synthetic.queries import parse_query
    from personsearch.sheet import MATCH, MISMATCH, SheetRow, SheetTile, render_contact_sheet

    title = f"{index.path.name}: {len(index)} images"
    try:
        attributes = gallery_attributes(index)
    except InputError as exc:  # the results stand; only the marks are lost
        log.warning("query sheet: hits are not marked, the synthetic attributes are unreadable: %s", exc)
        attributes = None
        title += f", {SYNTHETIC_LABEL} (hits not marked: its attributes.json is unreadable)"
    if attributes is not None:
        title += f", {SYNTHETIC_LABEL}; frame green: has every attribute the query names, red: does not"
    rows = []
    for result in results:
        caption = (
            result.query if len(result.query) <= caption_chars else result.query[: caption_chars - 1] + "…"
        )
        flags = attribute_matches(index, result, attributes) if attributes is not None else None
        frames: list[str | None] = [None] * len(result.results)
        if flags is not None:
            frames = [MATCH if flag else MISMATCH for flag in flags]
            named = ", ".join(f"{name} {value}" for name, value in parse_query(result.query).items())
            holders = gallery_holders(index, result.query, attributes)
            caption += f"\n{describe_matches(flags, holders)}: {named}"
        elif attributes is not None:
            caption += "\nnames no attribute of the synthetic set: hits not marked"
        tiles = [
            SheetTile(image_file(index, hit), f"#{hit.rank} {hit.score:.3f}", frame)
            for hit, frame in zip(result.results, frames, strict=True)
        ]
        rows.append(SheetRow(caption, tiles))
    render_contact_sheet(rows, out_path, title=title)
    return Path(out_path)
